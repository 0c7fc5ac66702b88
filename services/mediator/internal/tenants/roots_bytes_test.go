package tenants

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/medius-platform/medius/pkg/problem"
)

// Every job carries its tenant's roots (its record, its announcement, the
// processor's record, each work item, each answer listing it), so their
// total is bounded when they are set: 64 roots of 2 KiB would add 128 KiB
// to each, a batch's answer 128 MiB. Ordinary roots, many of them, fit.
func TestNormalizeLocatorRootsTotalBytes(t *testing.T) {
	var many []string
	for i := range MaxLocatorRoots {
		many = append(many, fmt.Sprintf("file:///srv/media/tenants/customer-%04d/", i))
	}
	if _, err := NormalizeLocatorRoots(many); err != nil {
		t.Fatalf("%d ordinary roots: %v", len(many), err)
	}

	var long []string
	for i := range MaxLocatorRoots {
		long = append(long, fmt.Sprintf("file:///srv/%s/%d/", strings.Repeat("a", 2000), i))
	}
	_, err := NormalizeLocatorRoots(long)
	var pe *problem.Error
	if !errors.As(err, &pe) || pe.Field != "locatorRoots" || !strings.Contains(pe.Detail, fmt.Sprint(MaxLocatorRootsBytes)) {
		t.Fatalf("%d roots of 2 KiB: %v, want InvalidArgument on locatorRoots naming the bound of %d bytes", len(long), err, MaxLocatorRootsBytes)
	}
	// What counts is the roots as stored: duplicates once.
	dup := make([]string, MaxLocatorRoots)
	for i := range dup {
		dup[i] = "file:///srv/" + strings.Repeat("b", 2000) + "/"
	}
	if _, err := NormalizeLocatorRoots(dup); err != nil {
		t.Fatalf("one long root given %d times: %v", len(dup), err)
	}
}
