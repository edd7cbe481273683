package main

import (
	"encoding/binary"
	"math"
	"testing"
)

func TestDecodeReadsEachCodeInTheRunsOrder(t *testing.T) {
	sum := 0.1
	sum += 0.2 // 0.30000000000000004 at run time (constants are exact): 30 hundredths, one step up
	want := []float64{0, 7, 300, sum, math.Copysign(0, -1), 1e300, 1561.23}
	// codes 0, 1, 2, 2 | 3, 3, 2: two header bytes, then the fixed-width values (uint8 7 and two
	// float64s), then the varints: 300<<1, 30<<5|9<<1|1 and 156123<<5|8<<1|1
	value := []byte{0 | 1<<2 | 2<<4 | 2<<6, 3 | 3<<2 | 2<<4, 7}
	for _, v := range want[4:6] {
		value = binary.LittleEndian.AppendUint64(value, math.Float64bits(v))
	}
	for _, m := range []uint64{300 << 1, 30<<5 | 9<<1 | 1, 156123<<5 | 8<<1 | 1} {
		value = binary.AppendUvarint(value, m)
	}
	names := []string{"f", "b", "a", "c", "d", "e", "g"}
	got, err := Decode(names, value)
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range names {
		if math.Float64bits(got[name]) != math.Float64bits(want[i]) {
			t.Errorf("%s: got %v, want %v", name, got[name], want[i])
		}
	}
	overlong := append(append([]byte{}, value[:len(value)-4]...), 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0)
	for _, bad := range [][]byte{value[:len(value)-1], append(value, 0), value[:1], overlong} {
		if _, err := Decode(names, bad); err == nil {
			t.Errorf("a record of %d bytes must be refused", len(bad))
		}
	}
}

func TestTheReadmeExampleDecodes(t *testing.T) {
	value := []byte{0xa4, 0x02, 0x07, 0xd8, 0x04, 0xd1, 0x0c, 0xf1, 0xf6, 0xb0, 0x02}
	got, err := Decode([]string{"a", "b", "c", "d", "e"}, value)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"a": 0, "b": 7, "c": 300, "d": 0.5, "e": 1561.23}
	for name, v := range want {
		if math.Float64bits(got[name]) != math.Float64bits(v) {
			t.Errorf("%s: got %v, want %v", name, got[name], v)
		}
	}
}
