package revcache

import (
	"fmt"
	"testing"
)

// The cache stays within its entry bound, dropping the least recently used.
func TestEntryBound(t *testing.T) {
	c := New[string](3)
	for i := range 4 {
		c.Put(fmt.Sprint(i), "x", 1)
	}
	if _, _, ok := c.Get("0"); ok || c.Len() != 3 {
		t.Fatalf("entries %d, oldest kept %v; want 3, dropped", c.Len(), ok)
	}
	c.Get("1") // used: "2" is now the least recently used
	c.Put("4", "x", 1)
	if _, _, ok := c.Get("2"); ok {
		t.Fatal("least recently used entry kept")
	}
	if _, _, ok := c.Get("1"); !ok {
		t.Fatal("recently used entry dropped")
	}
}

// An entry in use stays however many others pass through.
func TestEntryInUseStays(t *testing.T) {
	c := New[string](100)
	c.Put("keep", "x", 1)
	for i := range 1000 {
		c.Put(fmt.Sprint(i), "x", uint64(i+2))
		if i%40 == 0 {
			if _, _, ok := c.Get("keep"); !ok {
				t.Fatalf("entry in use evicted after %d others", i)
			}
		}
		if c.Len() > 100 {
			t.Fatalf("%d entries, bound 100", c.Len())
		}
	}
}

// The byte bound counts replaced and evicted values out again.
func TestByteBound(t *testing.T) {
	c := New(100, MaxBytes(10, func(b []byte) int { return len(b) }))
	c.Put("a", make([]byte, 6), 1)
	c.Put("b", make([]byte, 6), 1)
	if _, _, ok := c.Get("a"); ok || c.Len() != 1 {
		t.Fatalf("%d entries over the byte bound", c.Len())
	}
	// Replacing b's value by a smaller one frees room for another.
	c.Put("b", make([]byte, 2), 2)
	c.Put("c", make([]byte, 8), 1)
	if c.Len() != 2 {
		t.Fatalf("%d entries, want b and c within 10 bytes", c.Len())
	}
	c.Drop("c")
	c.Put("d", make([]byte, 8), 1)
	if _, _, ok := c.Get("b"); !ok {
		t.Fatal("a dropped value's bytes still counted: b evicted")
	}
}

// A read that raced a write never puts the older revision back.
func TestLaterRevisionWins(t *testing.T) {
	c := New[string](10)
	c.Put("j", "new", 7)
	c.Put("j", "old", 5)
	if v, rev, _ := c.Get("j"); rev != 7 || v != "new" {
		t.Fatalf("entry %q rev %d, want the later revision 7", v, rev)
	}
	c.Put("j", "newer", 7)
	if v, _, _ := c.Get("j"); v != "newer" {
		t.Fatalf("entry %q: a write at the same revision (the one read) replaces it", v)
	}
	c.Drop("j")
	c.Put("j", "old", 5)
	if v, _, ok := c.Get("j"); !ok || v != "old" {
		t.Fatal("after a drop any revision is taken")
	}
}
