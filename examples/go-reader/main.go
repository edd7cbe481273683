// Command go-reader reads features of one fx run from Redis, by name, the way the README's
// "Redis layout and the two-step read" specifies for services outside Python:
//
//  1. GET {prefix}:latest (or take -run) to find the run;
//  2. HMGET {prefix}:run:{run} encoding node_names edge_names: the run's own names, in record order;
//  3. GET {prefix}:{run}:n:{id} (e:{tx_id} with -edge) for each id, and decode the value
//     (tagged-varint): a header of one 2-bit code per name; then the fixed-width values in order
//     (code 1: uint8; code 3: float64 little-endian); then the varints in order (code 2: an unsigned
//     LEB128 m, an integer m>>1 when m is even, else hundredths n = m>>5 whose double's bits are
//     stepped by ((m>>1)&15) - 8); code 0 is +0.0, with no bytes.
//
// It prints one line per feature, "id<TAB>name<TAB>value", with the value in Go's shortest
// round-trip form (strconv 'g', -1), so a parser gets back exactly the stored double.
//
//	FX_REDIS_PASSWORD=... go run . -addr 127.0.0.1:6379 -user fx-reader A000123 A000124
//
// Several -addr (comma separated) connect to a Redis Cluster; one to a single server.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Encoding is the only record encoding this reader understands (the manifest's "encoding").
const Encoding = "tagged-varint"

// fixedWidths are the bytes of a value before the varints, by its code (code 2 is a varint).
var fixedWidths = [4]int{0, 1, 0, 8}

// Schema is a run's record schema, from its manifest.
type Schema struct {
	Nodes []string
	Edges []string
}

// varintValue is the double a code-2 varint stands for: the integer m>>1 when m is even; else the
// double whose bits are those of n/100 (n = m>>5, exact below 2**53, the division correctly rounded as
// in every IEEE language) plus d = ((m>>1)&15) - 8 units in the last place.
func varintValue(m uint64) float64 {
	if m&1 == 0 {
		return float64(m >> 1)
	}
	bits := math.Float64bits(float64(m>>5)/100) + ((m >> 1) & 15) - 8
	return math.Float64frombits(bits)
}

// Decode turns a stored record into its features by name; its bytes must be what its codes say: the
// header, the fixed-width values, then exactly one varint (1 to 8 bytes) per code 2.
func Decode(names []string, value []byte) (map[string]float64, error) {
	head := (len(names) + 3) / 4
	if len(value) < head {
		return nil, fmt.Errorf("a record of %d bytes; the run's %d names need a %d-byte header", len(value), len(names), head)
	}
	code := func(i int) byte { return value[i/4] >> (2 * (i % 4)) & 3 }
	fixed, count := head, 0
	for i := range names {
		fixed += fixedWidths[code(i)]
		if code(i) == 2 {
			count++
		}
	}
	if len(value) < fixed {
		return nil, fmt.Errorf("a record of %d bytes; its codes for the run's %d names say %d before the varints", len(value), len(names), fixed)
	}
	var varints []uint64
	var m uint64
	shift := 0
	for _, b := range value[fixed:] {
		m |= uint64(b&0x7f) << shift
		shift += 7
		if b < 0x80 {
			varints, m, shift = append(varints, m), 0, 0
		} else if shift == 56 {
			return nil, errors.New("a varint longer than 8 bytes")
		}
	}
	if shift != 0 || len(varints) != count {
		return nil, fmt.Errorf("a record with %d whole varints after its fixed-width values; its codes say %d", len(varints), count)
	}
	features := make(map[string]float64, len(names))
	at, next := head, 0
	for i, name := range names {
		switch code(i) {
		case 0:
			features[name] = 0
		case 1:
			features[name] = float64(value[at])
		case 2:
			features[name] = varintValue(varints[next])
			next++
		case 3:
			features[name] = math.Float64frombits(binary.LittleEndian.Uint64(value[at:]))
		}
		at += fixedWidths[code(i)]
	}
	return features, nil
}

// Reader reads one prefix's runs.
type Reader struct {
	Client redis.UniversalClient
	Prefix string
}

// Latest is the id of the run readers get.
func (r Reader) Latest(ctx context.Context) (string, error) {
	run, err := r.Client.Get(ctx, r.Prefix+":latest").Result()
	if errors.Is(err, redis.Nil) {
		return "", fmt.Errorf("no published run yet (%s:latest is not set)", r.Prefix)
	}
	return run, err
}

// Schema reads a run's names from its manifest.
func (r Reader) Schema(ctx context.Context, run string) (Schema, error) {
	fields, err := r.Client.HMGet(ctx, r.Prefix+":run:"+run, "encoding", "node_names", "edge_names").Result()
	if err != nil {
		return Schema{}, err
	}
	if fields[0] == nil {
		return Schema{}, fmt.Errorf("run %s has no manifest, or one without an encoding", run)
	}
	if fields[0] != Encoding {
		return Schema{}, fmt.Errorf("run %s: encoding %v; this reader reads %s", run, fields[0], Encoding)
	}
	var schema Schema
	for i, names := range []*[]string{&schema.Nodes, &schema.Edges} {
		text, ok := fields[i+1].(string)
		if !ok {
			return Schema{}, fmt.Errorf("run %s: the manifest has no feature names", run)
		}
		if err := json.Unmarshal([]byte(text), names); err != nil {
			return Schema{}, fmt.Errorf("run %s: feature names: %w", run, err)
		}
	}
	return schema, nil
}

// Records reads the records of ids (nil where a record is absent), one pipelined GET per id: a
// cluster client routes each to its slot's node.
func (r Reader) Records(ctx context.Context, run, kind string, ids []string) ([][]byte, error) {
	pipe := r.Client.Pipeline()
	gets := make([]*redis.StringCmd, len(ids))
	for i, id := range ids {
		gets[i] = pipe.Get(ctx, fmt.Sprintf("%s:%s:%s:%s", r.Prefix, run, kind, id))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	values := make([][]byte, len(ids))
	for i, get := range gets {
		value, err := get.Bytes()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return nil, err
		}
		values[i] = value
	}
	return values, nil
}

func main() {
	addrs := flag.String("addr", "127.0.0.1:6379", "host:port of the server, or of cluster nodes, comma separated")
	user := flag.String("user", "", "the ACL user (the password comes from FX_REDIS_PASSWORD)")
	prefix := flag.String("prefix", "fx", "the key prefix (redis.prefix)")
	run := flag.String("run", "", "a run id; defaults to the one fx:latest names")
	edge := flag.Bool("edge", false, "read transfers (tx ids) instead of accounts")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: go-reader [flags] ID...")
		os.Exit(2)
	}
	client := redis.NewUniversalClient(&redis.UniversalOptions{
		Addrs: strings.Split(*addrs, ","), Username: *user, Password: os.Getenv("FX_REDIS_PASSWORD"),
		DisableIdentity: true, // no CLIENT SETINFO: a read-only user (fx-reader) may not run it
	})
	defer client.Close()
	if err := read(context.Background(), Reader{client, *prefix}, *run, *edge, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "go-reader:", err)
		os.Exit(1)
	}
}

func read(ctx context.Context, reader Reader, run string, edge bool, ids []string) error {
	var err error
	if run == "" {
		if run, err = reader.Latest(ctx); err != nil {
			return err
		}
	}
	schema, err := reader.Schema(ctx, run)
	if err != nil {
		return err
	}
	kind, names := "n", schema.Nodes
	if edge {
		kind, names = "e", schema.Edges
	}
	values, err := reader.Records(ctx, run, kind, ids)
	if err != nil {
		return err
	}
	fmt.Printf("run\t%s\n", run)
	missing := 0
	for i, value := range values {
		if value == nil {
			fmt.Printf("%s\t-\t-\n", ids[i])
			missing++
			continue
		}
		features, err := Decode(names, value)
		if err != nil {
			return fmt.Errorf("%s: %w", ids[i], err)
		}
		for _, name := range names {
			fmt.Printf("%s\t%s\t%s\n", ids[i], name, strconv.FormatFloat(features[name], 'g', -1, 64))
		}
	}
	if missing > 0 {
		return fmt.Errorf("%d of %d records not in run %s", missing, len(ids), run)
	}
	return nil
}
