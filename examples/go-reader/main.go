// Command go-reader reads features of one fx run from Redis, by name, the way the README's
// "Redis layout and the two-step read" specifies for services outside Python:
//
//  1. GET {prefix}:latest (or take -run) to find the run;
//  2. HMGET {prefix}:run:{run} encoding node_names edge_names: the run's own names, in record order;
//  3. GET {prefix}:{run}:n:{id} (e:{tx_id} with -edge) for each id, and decode the value (tagged-le):
//     a header of one 2-bit code per name, then the values that are not +0.0, little-endian, in the
//     width their code gives (0: +0.0, no bytes; 1: uint8; 2: uint32; 3: float64).
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
const Encoding = "tagged-le"

// widths are the bytes of a value, by its code.
var widths = [4]int{0, 1, 4, 8}

// Schema is a run's record schema, from its manifest.
type Schema struct {
	Nodes []string
	Edges []string
}

// Decode turns a stored record into its features by name; its length must be what its codes say.
func Decode(names []string, value []byte) (map[string]float64, error) {
	head := (len(names) + 3) / 4
	if len(value) < head {
		return nil, fmt.Errorf("a record of %d bytes; the run's %d names need a %d-byte header", len(value), len(names), head)
	}
	code := func(i int) byte { return value[i/4] >> (2 * (i % 4)) & 3 }
	size := head
	for i := range names {
		size += widths[code(i)]
	}
	if len(value) != size {
		return nil, fmt.Errorf("a record of %d bytes; its codes for the run's %d names say %d", len(value), len(names), size)
	}
	features := make(map[string]float64, len(names))
	at := head
	for i, name := range names {
		switch code(i) {
		case 0:
			features[name] = 0
		case 1:
			features[name] = float64(value[at])
		case 2:
			features[name] = float64(binary.LittleEndian.Uint32(value[at:]))
		case 3:
			features[name] = math.Float64frombits(binary.LittleEndian.Uint64(value[at:]))
		}
		at += widths[code(i)]
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
