package main

import (
	"encoding/binary"
	"math"
	"testing"
)

func TestDecodeReadsLittleEndianDoublesInTheRunsOrder(t *testing.T) {
	sum := 0.1
	sum += 0.2 // 0.30000000000000004 at run time (constants are exact)
	want := []float64{sum, math.Copysign(0, -1), 1e300, math.SmallestNonzeroFloat64}
	value := make([]byte, 8*len(want))
	for i, v := range want {
		binary.LittleEndian.PutUint64(value[8*i:], math.Float64bits(v))
	}
	names := []string{"b", "a", "c", "d"}
	got, err := Decode(names, value)
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range names {
		if math.Float64bits(got[name]) != math.Float64bits(want[i]) {
			t.Errorf("%s: got %v, want %v", name, got[name], want[i])
		}
	}
	if _, err := Decode(names[:3], value); err == nil {
		t.Error("a record of another length must be refused")
	}
}
