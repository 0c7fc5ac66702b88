package jobapi

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"strings"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/problem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// Bounds on client-supplied fields: jobs carry references to media, never
// media, so anything larger is a mistake or abuse.
const (
	maxTags          = 64
	maxTagKeyLen     = 128
	maxTagValueLen   = 256
	maxURLLen        = 2048
	maxLocators      = 256
	maxRequestIDLen  = 256
	maxShortFieldLen = 128
	// maxJobBytes bounds a job as submitted, encoded: its record, its
	// announcement, the processor's record and the work item each carry
	// it, and NATS refuses a message over its max_payload (1 MiB by
	// default). A job past that would be stored and never announced: it
	// would stay NEW for good. A quarter of it leaves room for the
	// executions and output the records gain.
	maxJobBytes = 256 << 10
)

// locatorSchemes are the locator kinds workers understand (docs/internals.md).
var locatorSchemes = map[string]bool{"file": true, "http": true, "https": true, "s3": true}

// validateJob checks what needs no profile: presence and bounds of fields.
func validateJob(job *jobsv1.Job) error {
	if job == nil {
		return problem.InvalidArgument("job", "job is required")
	}
	if strings.TrimSpace(job.GetProfile()) == "" {
		return problem.InvalidArgument("job.profile", "profile is required")
	}
	if n := proto.Size(job); n > maxJobBytes {
		return problem.InvalidArgument(largestPart(job), "job is %d bytes encoded, over the limit of %d: jobs carry references to media (locators), not media or documents", n, maxJobBytes)
	}
	if len(job.GetProfile()) > maxShortFieldLen {
		return problem.InvalidArgument("job.profile", "profile name longer than %d bytes", maxShortFieldLen)
	}
	if len(job.GetJobType()) > maxShortFieldLen {
		return problem.InvalidArgument("job.job_type", "job type longer than %d bytes", maxShortFieldLen)
	}
	if len(job.GetRegion()) > maxShortFieldLen {
		return problem.InvalidArgument("job.region", "region longer than %d bytes", maxShortFieldLen)
	}
	if len(job.GetTags()) > maxTags {
		return problem.InvalidArgument("job.tags", "at most %d tags", maxTags)
	}
	for k, v := range job.GetTags() {
		if k == "" || len(k) > maxTagKeyLen {
			return problem.InvalidArgument("job.tags", "tag keys must be 1 to %d bytes", maxTagKeyLen)
		}
		if len(v) > maxTagValueLen {
			return problem.InvalidArgument(fmt.Sprintf("job.tags[%s]", k), "tag value longer than %d bytes", maxTagValueLen)
		}
	}
	if ep := job.GetNotificationEndpoint(); ep != "" {
		if len(ep) > maxURLLen {
			return problem.InvalidArgument("job.notification_endpoint", "notification endpoint longer than %d bytes", maxURLLen)
		}
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return problem.InvalidArgument("job.notification_endpoint", "notification endpoint must be an absolute http(s) URL")
		}
	}
	if t := job.GetTimeout(); t != nil {
		if err := t.CheckValid(); err != nil || t.AsDuration() < 0 {
			return problem.InvalidArgument("job.timeout", "timeout must be a non-negative duration")
		}
	}
	if d := job.GetDeadline(); d != nil {
		if err := d.CheckValid(); err != nil {
			return problem.InvalidArgument("job.deadline", "deadline is not a valid time")
		}
	}
	if len(job.GetInput().GetLocators()) > maxLocators {
		return problem.InvalidArgument("job.input.locators", "at most %d locators", maxLocators)
	}
	for name, loc := range job.GetInput().GetLocators() {
		if err := validateLocator(name, loc); err != nil {
			return err
		}
	}
	return nil
}

// largestPart names the field of job taking the most room, for the
// refusal of a job too large.
func largestPart(job *jobsv1.Job) string {
	field, most := "job", 0
	for name, n := range map[string]int{
		"job.input.parameters": proto.Size(job.GetInput().GetParameters()),
		"job.input.locators":   proto.Size(&jobsv1.JobInput{Locators: job.GetInput().GetLocators()}),
		"job.tracking":         proto.Size(job.GetTracking()),
		"job.tags":             proto.Size(&jobsv1.Job{Tags: job.GetTags()}),
	} {
		if n > most {
			field, most = name, n
		}
	}
	return field
}

func validateLocator(name string, loc *jobsv1.Locator) error {
	field := fmt.Sprintf("job.input.locators[%s]", name)
	if name == "" {
		return problem.InvalidArgument("job.input.locators", "locator names must not be empty")
	}
	raw := loc.GetUrl()
	if raw == "" {
		return problem.InvalidArgument(field, "locator %q has no url", name)
	}
	if len(raw) > maxURLLen {
		return problem.InvalidArgument(field, "locator %q url longer than %d bytes", name, maxURLLen)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return problem.InvalidArgument(field, "locator %q: url does not parse", name)
	}
	scheme := strings.ToLower(u.Scheme)
	if !locatorSchemes[scheme] {
		return problem.InvalidArgument(field, "locator %q: scheme must be file, http, https or s3", name)
	}
	switch scheme {
	case "file":
		if u.Path == "" {
			return problem.InvalidArgument(field, "locator %q: file url has no path", name)
		}
	default:
		if u.Host == "" {
			return problem.InvalidArgument(field, "locator %q: url has no host", name)
		}
	}
	return nil
}

// validateAgainstProfile checks the job's input provides every parameter the
// profile requires, as a locator or a parameter of that name, and that every
// declared parameter given has the declared type.
func validateAgainstProfile(job *jobsv1.Job, profile *registryv1.JobProfile) error {
	in := job.GetInput()
	for _, spec := range profile.GetInputParameters() {
		name := spec.GetName()
		if _, ok := in.GetLocators()[name]; ok {
			continue
		}
		if _, ok := in.GetParameters().GetFields()[name]; ok {
			continue
		}
		return problem.InvalidArgument("job.input."+name, "profile %q requires input parameter %q", profile.GetName(), name)
	}
	for _, specs := range [][]*registryv1.ParameterSpec{profile.GetInputParameters(), profile.GetOptionalInputParameters()} {
		for _, spec := range specs {
			if err := checkParameterType(profile.GetName(), spec, in); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkParameterType checks a given parameter against its declared type. A
// locator may come as a locator or as a URL string parameter; the string is
// moved to the locators, where workers look for it.
func checkParameterType(profile string, spec *registryv1.ParameterSpec, in *jobsv1.JobInput) error {
	name, want := spec.GetName(), strings.ToLower(spec.GetType())
	if strings.HasSuffix(want, "locator") {
		// MCMA names kinds of locators (AwsS3FileLocator...); all are locators.
		want = "locator"
	}
	_, isLocator := in.GetLocators()[name]
	v, isParam := in.GetParameters().GetFields()[name]
	if !isLocator && !isParam {
		return nil
	}
	got := "locator"
	if !isLocator {
		got = valueType(v)
	}
	if want == "locator" && got == "string" {
		return moveToLocators(profile, name, v.GetStringValue(), in)
	}
	ok := got == want ||
		(want == "number" && got == "integer") ||
		want == "" // an untyped parameter takes anything
	if !ok {
		return problem.InvalidArgument("job.input."+name, "profile %q input parameter %q must be of type %s, got %s", profile, name, want, got)
	}
	return nil
}

// moveToLocators makes the URL string parameter name a locator of in,
// checked as any locator.
func moveToLocators(profile, name, raw string, in *jobsv1.JobInput) error {
	loc := &jobsv1.Locator{Url: raw}
	if err := validateLocator(name, loc); err != nil {
		var pe *problem.Error
		if errors.As(err, &pe) {
			return problem.InvalidArgument("job.input."+name, "profile %q input parameter %q is a locator (a file, http, https or s3 URL): %s",
				profile, name, pe.Detail)
		}
		return err
	}
	if in.Locators == nil {
		in.Locators = map[string]*jobsv1.Locator{}
	}
	in.Locators[name] = loc
	delete(in.GetParameters().GetFields(), name)
	return nil
}

// valueType names a JSON value's type as profiles do; a whole number is an
// integer (and so also a number).
func valueType(v *structpb.Value) string {
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		return "string"
	case *structpb.Value_NumberValue:
		if k.NumberValue == math.Trunc(k.NumberValue) && !math.IsInf(k.NumberValue, 0) {
			return "integer"
		}
		return "number"
	case *structpb.Value_BoolValue:
		return "boolean"
	case *structpb.Value_StructValue:
		return "object"
	case *structpb.Value_ListValue:
		return "array"
	}
	return "null"
}
