package profiles

import (
	"context"
	"errors"
	"fmt"
	"strings"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/pkg/workersdk"
	"google.golang.org/grpc/codes"
)

// namedOutputs says where each output of a profile goes. An output whose
// name is also given as an input locator is written exactly there (a signed
// http(s) URL gets a PUT, an s3:// URL an object, a file:// URL a file):
// that is how a client asks for some outputs only, each at its own place,
// as the Cortex SpeechToTextOutput does. Every other output goes under the
// outputLocation folder, when there is one. Used by SpeechToText and
// DetectShots.
type namedOutputs struct {
	res    *locator.Resolver
	own    map[string]string // output name -> where the job put it
	folder *outputs          // nil without an outputLocation
}

// newNamedOutputs reads the job's output locators for the outputs names,
// checking every one against the policy, and the job's locator roots ctx
// carries (the handler's), before any work is spent.
// several says the folder receives more than one file, which an http(s)
// outputLocation (one signed URL) cannot take.
func newNamedOutputs(ctx context.Context, res *locator.Resolver, item *workersdk.WorkItem, names []string, several bool) (*namedOutputs, error) {
	o := &namedOutputs{res: res, own: map[string]string{}}
	for _, name := range names {
		u := item.GetInput().GetLocators()[name].GetUrl()
		if u == "" {
			continue
		}
		if err := res.CheckContext(ctx, u); err != nil {
			return nil, workersdk.InputError(name, u, err)
		}
		o.own[name] = u
	}
	if item.GetInput().GetLocators()[ParamOutputLocation].GetUrl() == "" {
		return o, nil
	}
	folder, err := newOutputs(ctx, res, item)
	if err != nil {
		return nil, err
	}
	if several && len(o.own) < len(names) {
		if _, err := locator.Join(folder.base, "probe"); err != nil {
			return nil, workersdk.InputError(ParamOutputLocation, folder.base,
				fmt.Errorf("%w (or name each output by its own locator: %s)", err, strings.Join(names, ", ")))
		}
	}
	o.folder = folder
	return o, nil
}

// none tells that the job asked for no output at all.
func (o *namedOutputs) none() bool { return len(o.own) == 0 && o.folder == nil }

// wants tells whether the output called name is to be written.
func (o *namedOutputs) wants(name string) bool { return o.own[name] != "" || o.folder != nil }

// missing is the problem of a job that names nowhere to write.
func (o *namedOutputs) missing(item *workersdk.WorkItem, names []string) error {
	return &problem.Error{Code: codes.InvalidArgument, Type: workersdk.TypeInvalidInput, Title: "Missing output location",
		Detail: fmt.Sprintf("profile %s needs an output locator: %q (a file:// directory or s3:// prefix receiving every output) or any of %s (each written exactly there)",
			item.GetProfile(), ParamOutputLocation, strings.Join(names, ", ")),
		Field: workersdk.LocatorField(ParamOutputLocation)}
}

// put stores local file src as the output called name (file under the
// folder; single says it is the folder's only file, so an http(s) folder
// URL may take it) and returns its locator.
func (o *namedOutputs) put(ctx context.Context, name, src, file string, single bool) (*jobsv1.Locator, error) {
	u := o.own[name]
	if u == "" {
		return o.folder.put(ctx, src, file, single)
	}
	if err := o.res.Put(ctx, u, src); err != nil {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		p := workersdk.InputError(name, u, err)
		var pe *problem.Error
		if errors.As(p, &pe) {
			pe.Title = "Output not stored"
		}
		return nil, p
	}
	return &jobsv1.Locator{Url: u}, nil
}
