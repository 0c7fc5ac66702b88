package processor

import (
	"context"
	"fmt"
	"testing"
	"time"
)

func heldIDs(es []*heldMsg) []string {
	var ids []string
	for _, e := range es {
		ids = append(ids, e.msg.msgID)
	}
	return ids
}

func TestHeldFallsDueInOrderAndReleases(t *testing.T) {
	h := newHeld(time.Second)
	t0 := time.Unix(1000, 0)
	settled := map[string]int{}
	for i := range 4 {
		job := fmt.Sprint("job-", i)
		if !h.hold(context.Background(), job, outMsg{msgID: fmt.Sprint("m", i), announces: "x"}, t0.Add(time.Duration(i)*time.Millisecond),
			func() { settled[job]++ }) {
			t.Fatalf("hold %d refused", i)
		}
	}
	h.release("job-1").settle() // its later announcement was stored
	h.drop("job-3")             // not dispatched after all: its JobCreated is settled by its handler
	if fmt.Sprint(settled) != "map[job-1:1]" {
		t.Fatalf("settled %v, want job-1's JobCreated alone, by its release", settled)
	}
	if h.release("job-1") != nil || h.release("job-3") != nil {
		t.Fatal("released twice")
	}
	if due := h.take(t0.Add(500 * time.Millisecond)); len(due) != 0 || !h.next().Equal(t0.Add(time.Second)) {
		t.Fatalf("before the delay: took %v, next due %v", heldIDs(due), h.next())
	}
	due := h.take(t0.Add(time.Second + time.Millisecond))
	if got := fmt.Sprint(heldIDs(due)); got != "[m0]" || due[0].job != "job-0" || !h.next().Equal(t0.Add(time.Second+2*time.Millisecond)) {
		t.Fatalf("took %s, next due %v; want [m0] (m1 released), next at m2's", got, h.next())
	}
	if m := due[0].msg; m.announces != "" || !m.expectNew || m.header == nil {
		t.Errorf("a held announcement must go out only as its job's first, with its trace, releasing nothing: %+v", m)
	}
	if len(settled) != 1 {
		t.Fatalf("settled %v on take: settling is the publisher's, once published", settled)
	}
	if due := h.take(time.Time{}); fmt.Sprint(heldIDs(due)) != "[m2]" || !h.next().IsZero() {
		t.Fatalf("flush took %v, next %v", heldIDs(due), h.next())
	}
}

// The queue, released entries included, is bounded: past heldMax the caller
// announces at once.
func TestHeldIsBounded(t *testing.T) {
	h := newHeld(time.Minute)
	now := time.Unix(1000, 0)
	for i := range heldMax {
		if !h.hold(context.Background(), fmt.Sprint("job-", i), outMsg{}, now, func() {}) {
			t.Fatalf("hold %d refused below the bound", i)
		}
		h.release(fmt.Sprint("job-", i))
	}
	if h.hold(context.Background(), "one-more", outMsg{}, now, func() {}) {
		t.Fatal("held beyond heldMax")
	}
	if due := h.take(now.Add(time.Minute)); len(due) != 0 {
		t.Fatalf("released entries were sent: %d", len(due))
	}
	if !h.hold(context.Background(), "one-more", outMsg{}, now, func() {}) {
		t.Fatal("no room once the released entries fell due")
	}
}

func TestNoDelayHoldsNothing(t *testing.T) {
	if newHeld(-1).hold(context.Background(), "job-1", outMsg{}, time.Now(), func() {}) {
		t.Fatal("a negative delay held an announcement")
	}
}
