package main

import (
	"encoding/binary"
	"math"
	"testing"
)

func TestDecodeReadsEachCodesWidthInTheRunsOrder(t *testing.T) {
	sum := 0.1
	sum += 0.2 // 0.30000000000000004 at run time (constants are exact)
	want := []float64{0, 7, 300, sum, math.Copysign(0, -1), 1e300}
	// codes 0, 1, 2, 3 | 3, 3: two header bytes, then uint8 7, uint32 300 and three float64s
	value := []byte{0 | 1<<2 | 2<<4 | 3<<6, 3 | 3<<2, 7}
	value = binary.LittleEndian.AppendUint32(value, 300)
	for _, v := range want[3:] {
		value = binary.LittleEndian.AppendUint64(value, math.Float64bits(v))
	}
	names := []string{"f", "b", "a", "c", "d", "e"}
	got, err := Decode(names, value)
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range names {
		if math.Float64bits(got[name]) != math.Float64bits(want[i]) {
			t.Errorf("%s: got %v, want %v", name, got[name], want[i])
		}
	}
	for _, bad := range [][]byte{value[:len(value)-1], append(value, 0), value[:1]} {
		if _, err := Decode(names, bad); err == nil {
			t.Errorf("a record of %d bytes must be refused", len(bad))
		}
	}
}
