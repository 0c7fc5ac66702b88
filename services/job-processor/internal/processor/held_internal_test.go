package processor

import (
	"context"
	"fmt"
	"testing"
	"time"
)

func heldIDs(msgs []outMsg) []string {
	var ids []string
	for _, m := range msgs {
		ids = append(ids, m.msgID)
	}
	return ids
}

func TestHeldFallsDueInOrderAndReleases(t *testing.T) {
	h := newHeld(time.Second)
	t0 := time.Unix(1000, 0)
	for i := range 3 {
		if !h.hold(context.Background(), fmt.Sprint("job-", i), outMsg{msgID: fmt.Sprint("m", i), announces: "x"}, t0.Add(time.Duration(i)*time.Millisecond)) {
			t.Fatalf("hold %d refused", i)
		}
	}
	h.release("job-1") // its later announcement went out
	if _, due := h.take(t0.Add(500 * time.Millisecond)); len(due) != 0 || !h.next().Equal(t0.Add(time.Second)) {
		t.Fatalf("before the delay: took %v, next due %v", heldIDs(due), h.next())
	}
	jobs, due := h.take(t0.Add(time.Second + time.Millisecond))
	if got := fmt.Sprint(jobs, heldIDs(due)); got != "[job-0] [m0]" || !h.next().Equal(t0.Add(time.Second+2*time.Millisecond)) {
		t.Fatalf("took %s, next due %v; want [job-0] [m0] (m1 released), next at m2's", got, h.next())
	}
	if due[0].announces != "" || !due[0].expectNew || due[0].header == nil {
		t.Errorf("a held announcement must go out only as its job's first, with its trace, releasing nothing: %+v", due[0])
	}
	if _, due := h.take(time.Time{}); fmt.Sprint(heldIDs(due)) != "[m2]" || !h.next().IsZero() {
		t.Fatalf("flush took %v, next %v", heldIDs(due), h.next())
	}
}

// The queue, released entries included, is bounded: past heldMax the caller
// announces at once.
func TestHeldIsBounded(t *testing.T) {
	h := newHeld(time.Minute)
	now := time.Unix(1000, 0)
	for i := range heldMax {
		if !h.hold(context.Background(), fmt.Sprint("job-", i), outMsg{}, now) {
			t.Fatalf("hold %d refused below the bound", i)
		}
		h.release(fmt.Sprint("job-", i))
	}
	if h.hold(context.Background(), "one-more", outMsg{}, now) {
		t.Fatal("held beyond heldMax")
	}
	if _, due := h.take(now.Add(time.Minute)); len(due) != 0 {
		t.Fatalf("released entries were sent: %d", len(due))
	}
	if !h.hold(context.Background(), "one-more", outMsg{}, now) {
		t.Fatal("no room once the released entries fell due")
	}
}

func TestNoDelayHoldsNothing(t *testing.T) {
	if newHeld(-1).hold(context.Background(), "job-1", outMsg{}, time.Now()) {
		t.Fatal("a negative delay held an announcement")
	}
}
