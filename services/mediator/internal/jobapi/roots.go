package jobapi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/tenants"
	"google.golang.org/grpc/codes"
)

// TypeLocatorNotAllowed is the problem type of a job naming a file:// or
// s3:// locator outside its tenant's locator roots.
const TypeLocatorNotAllowed = "locator-not-allowed"

// LocatorRoots gives the roots a tenant's file:// and s3:// locators must
// fall under (tenants.Store, from its cache: no etcd read per job).
type LocatorRoots interface {
	LocatorRoots(ctx context.Context, tenant string) (tenants.Roots, error)
}

// SetLocatorRoots checks every file:// and s3:// locator of a new job
// against its tenant's roots from r, and gives the job those roots, which
// its workers enforce on every locator it resolves (nil: neither, for tests
// of other things; the mediator always sets it). Workers read and write
// those with rights shared by every tenant, so this check, and the
// workers' own with the roots the job carries, is what keeps a tenant off
// another's media.
func (s *Server) SetLocatorRoots(r LocatorRoots) { s.roots = r }

// shownRoots bounds the roots a refusal lists.
const shownRoots = 4

// checkLocatorRoots refuses (403 / PermissionDenied, locator-not-allowed)
// a job of tenant naming a file:// or s3:// locator outside the tenant's
// roots, the outputs' locations included. moved names the locators given
// as string parameters (moveToLocators), whose field is the parameter's.
// Locators are checked in name order, so a refusal is the same each time.
//
// It returns the roots the job's run is to carry (Job.locator_roots): also
// for a job naming no such locator, since its profile may resolve one from
// a parameter the mediator does not type as a locator, which only the
// workers see. They come from the tenants' cache that admission reads too,
// so that costs no etcd read of its own. Nil when no roots are set
// (SetLocatorRoots): the job's workers then apply their own roots only.
func (s *Server) checkLocatorRoots(ctx context.Context, tenant string, in *jobsv1.JobInput, moved map[string]bool) (*jobsv1.LocatorRoots, error) {
	if s.roots == nil {
		return nil, nil
	}
	roots, err := s.roots.LocatorRoots(ctx, tenant)
	if err != nil && !errors.Is(err, tenants.ErrTenantNotFound) {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return nil, err
		}
		return nil, problem.Unavailable("tenant store unavailable", fmt.Errorf("locator roots of %s: %w", tenant, err))
	}
	// A tenant without a record has no roots (its keys went with it).
	var names []string
	for name, loc := range in.GetLocators() {
		if locator.Rooted(loc.GetUrl()) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		raw := in.GetLocators()[name].GetUrl()
		field := fmt.Sprintf("job.input.locators[%s]", name)
		if moved[name] {
			field = "job.input." + name
		}
		ok, why, err := roots.Within(raw)
		if err != nil {
			return nil, problem.InvalidArgument(field, "locator %q: %v", name, err)
		}
		if !ok {
			return nil, notAllowed(tenant, name, field, raw, why, roots)
		}
	}
	return &jobsv1.LocatorRoots{Roots: roots.Strings()}, nil
}

// notAllowed is the refusal of locator name (at field, url raw) of a job
// of tenant: what the tenant may name instead, and how it gets more.
func notAllowed(tenant, name, field, raw, why string, roots tenants.Roots) error {
	var b strings.Builder
	fmt.Fprintf(&b, "tenant %q may not use locator %q (%s): %s", tenant, name, locator.Redact(raw), why)
	if n := roots.Len(); n > 0 {
		list := roots.Strings()
		if n > shownRoots {
			list = append(list[:shownRoots], fmt.Sprintf("and %d more", n-shownRoots))
		}
		fmt.Fprintf(&b, " (%s)", strings.Join(list, ", "))
	}
	fmt.Fprintf(&b, ". file:// and s3:// locators must lie under one of the tenant's locator roots; an admin grants them with "+
		"`medius tenants set-locator-roots %s ROOT...` (PUT /v1/tenants/%s/locator-roots), e.g. file:///srv/media/%s/ or s3://bucket/%s/",
		tenant, tenant, tenant, tenant)
	return &problem.Error{Code: codes.PermissionDenied, Type: TypeLocatorNotAllowed, Title: "Locator not allowed", Detail: b.String(), Field: field}
}

// locatorNames lists in's locators, so that those a profile check moves
// from the parameters can be told apart afterwards; nil when no parameter
// could be moved.
func locatorNames(in *jobsv1.JobInput) map[string]bool {
	if len(in.GetParameters().GetFields()) == 0 {
		return nil
	}
	names := make(map[string]bool, len(in.GetLocators()))
	for name := range in.GetLocators() {
		names[name] = true
	}
	return names
}

// movedLocators names the locators of in not in before (locatorNames):
// those moved from its parameters.
func movedLocators(in *jobsv1.JobInput, before map[string]bool) map[string]bool {
	if before == nil {
		return nil
	}
	var moved map[string]bool
	for name := range in.GetLocators() {
		if !before[name] {
			if moved == nil {
				moved = map[string]bool{}
			}
			moved[name] = true
		}
	}
	return moved
}
