package profiles

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/pkg/workersdk"
)

// The built-in profiles resolve their inputs and check their outputs under
// the job's locator roots, which the SDK puts on the handler's ctx: an
// input that is a symlink into another tenant's directory is refused, and
// so is an output location (or a named output) whose directory leads there,
// before any work is spent (the missing input is never looked at). Without
// roots on the ctx (an item from an older processor), only the worker's
// roots apply, as before.
func TestProfilesResolveUnderTheJobsRoots(t *testing.T) {
	media := t.TempDir()
	acme, beta := filepath.Join(media, "acme"), filepath.Join(media, "beta")
	for _, d := range []string{acme, beta} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(beta, "secret.mp4"), []byte("not media"), 0o600); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{"link.mp4": filepath.Join(beta, "secret.mp4"), "out": beta} {
		if err := os.Symlink(target, filepath.Join(acme, link)); err != nil {
			t.Fatal(err)
		}
	}
	res := &locator.Resolver{Roots: []string{media}, TempDir: t.TempDir()}
	tenant := locator.WithTenantRoots(t.Context(), []string{"file://" + acme + "/"})
	missing := "file://" + filepath.Join(acme, "nope.mp4")
	out := "file://" + filepath.Join(acme, "out") + "/"

	shots := workItem(DetectShots, missing, "", nil)
	shots.Input.Locators[ParamOutputFile] = &jobsv1.Locator{Url: "file://" + filepath.Join(acme, "out", "shots.json")}
	for _, tc := range []struct {
		name    string
		profile workersdk.Profile
		item    *workersdk.WorkItem
		field   string // refused under the roots
		without string // the problem type without them
	}{
		{"input symlink", TechnicalMetadata(res), workItem(ExtractTechnicalMetadata, "file://"+filepath.Join(acme, "link.mp4"), "", nil),
			workersdk.LocatorField(ParamInputFile), workersdk.TypeToolFailed}, // it read beta's file, which is no media
		{"output location", TranscodeProfile(res, CreateProxy), workItem(CreateProxy, missing, out, nil),
			workersdk.LocatorField(ParamOutputLocation), workersdk.TypeInputNotFound},
		{"thumbnails folder", ThumbnailsProfile(res), workItem(ExtractThumbnails, missing, out, nil),
			workersdk.LocatorField(ParamOutputLocation), workersdk.TypeInputNotFound},
		{"named output", ShotsProfile(res), shots, workersdk.LocatorField(ParamOutputFile), workersdk.TypeInputNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := tc.profile.Handler(tenant, tc.item, func(int) {})
			var pe *problem.Error
			if !errors.As(err, &pe) || pe.Type != workersdk.TypeLocatorForbidden || pe.Field != tc.field ||
				!strings.Contains(pe.Detail, "outside the tenant's locator roots") {
				t.Fatalf("under acme's roots: %v, want %s on %s", err, workersdk.TypeLocatorForbidden, tc.field)
			}
			_, _, err = tc.profile.Handler(context.WithoutCancel(t.Context()), tc.item, func(int) {})
			if !errors.As(err, &pe) || pe.Type != tc.without {
				t.Fatalf("without roots: %v, want %s (the worker's roots only)", err, tc.without)
			}
		})
	}
	if entries, _ := os.ReadDir(beta); len(entries) != 1 {
		t.Errorf("beta's directory holds %d entries, want only its own file", len(entries))
	}
}
