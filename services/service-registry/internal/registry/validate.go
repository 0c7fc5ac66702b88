package registry

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/problem"
)

// maxNameLen keeps keys (and NATS subjects built from names) bounded.
const maxNameLen = 200

// maxURLLen bounds a resource endpoint URL.
const maxURLLen = 2048

var namePattern = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// ParameterTypes are the types a job profile parameter may have.
var ParameterTypes = map[string]bool{
	"string": true, "number": true, "integer": true, "boolean": true,
	"object": true, "array": true, "locator": true,
}

// checkName validates a resource name; names become etcd keys and NATS
// subject tokens, so they must not carry '/', spaces or wildcards.
func checkName(field, name string) error {
	switch {
	case name == "":
		return problem.InvalidArgument(field, "%s is required", field)
	case len(name) > maxNameLen:
		return problem.InvalidArgument(field, "%s is longer than %d characters", field, maxNameLen)
	case !namePattern.MatchString(name):
		return problem.InvalidArgument(field, "%s %q must match [A-Za-z0-9_-]+ (a dot would split the NATS subject built from it)", field, name)
	}
	return nil
}

func checkNames(field string, names []string) error {
	for i, n := range names {
		if err := checkName(fmt.Sprintf("%s[%d]", field, i), n); err != nil {
			return err
		}
	}
	return nil
}

func checkNonEmpty(field string, values []string) error {
	for i, v := range values {
		if v == "" {
			f := fmt.Sprintf("%s[%d]", field, i)
			return problem.InvalidArgument(f, "%s must not be empty", f)
		}
	}
	return nil
}

// JobTypes are the MCMA job types; a profile or service naming another is
// refused, so a typo never leaves a profile no job can match.
var JobTypes = []string{"AIJob", "AmeJob", "CaptureJob", "DistributionJob", "QAJob", "TransferJob", "TransformJob", "WorkflowJob"}

func checkJobType(field, t string) error {
	if !slices.Contains(JobTypes, t) {
		return problem.InvalidArgument(field, "%s %q is not an MCMA job type (%s)", field, t, strings.Join(JobTypes, ", "))
	}
	return nil
}

// validateService checks a service definition; prefix is where it sits in
// the request ("service"), so the error names the field as the client sent it.
func validateService(prefix string, s *registryv1.Service) error {
	if s == nil {
		return problem.InvalidArgument(prefix, "%s is required", prefix)
	}
	if err := checkName(prefix+".name", s.GetName()); err != nil {
		return err
	}
	if err := checkNonEmpty(prefix+".job_types", s.GetJobTypes()); err != nil {
		return err
	}
	for i, t := range s.GetJobTypes() {
		if err := checkJobType(fmt.Sprintf("%s.job_types[%d]", prefix, i), t); err != nil {
			return err
		}
	}
	if err := checkNames(prefix+".profiles", s.GetProfiles()); err != nil {
		return err
	}
	if err := checkNonEmpty(prefix+".regions", s.GetRegions()); err != nil {
		return err
	}
	if s.GetCostPerUnit() < 0 {
		return problem.InvalidArgument(prefix+".cost_per_unit", "%s.cost_per_unit must not be negative", prefix)
	}
	if s.GetDefaultCapacity() < 0 {
		return problem.InvalidArgument(prefix+".default_capacity", "%s.default_capacity must not be negative", prefix)
	}
	for i, r := range s.GetResources() {
		field := fmt.Sprintf("%s.resources[%d]", prefix, i)
		if r.GetResourceType() == "" {
			return problem.InvalidArgument(field+".resource_type", "%s.resource_type is required", field)
		}
		u, err := url.Parse(r.GetHttpEndpoint())
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || len(r.GetHttpEndpoint()) > maxURLLen {
			return problem.InvalidArgument(field+".http_endpoint", "%s.http_endpoint must be an absolute http(s) URL of at most %d bytes", field, maxURLLen)
		}
	}
	return nil
}

// validateProfile checks a job profile: a valid name, a job type, and
// parameters with unique names (across input, optional input and output, as
// one job's parameters share one namespace) and known types.
func validateProfile(prefix string, p *registryv1.JobProfile) error {
	if p == nil {
		return problem.InvalidArgument(prefix, "%s is required", prefix)
	}
	if err := checkName(prefix+".name", p.GetName()); err != nil {
		return err
	}
	if p.GetJobType() == "" {
		return problem.InvalidArgument(prefix+".job_type", "%s.job_type is required", prefix)
	}
	if err := checkJobType(prefix+".job_type", p.GetJobType()); err != nil {
		return err
	}
	seen := map[string]string{}
	lists := []struct {
		field  string
		params []*registryv1.ParameterSpec
	}{
		{prefix + ".input_parameters", p.GetInputParameters()},
		{prefix + ".optional_input_parameters", p.GetOptionalInputParameters()},
		{prefix + ".output_parameters", p.GetOutputParameters()},
	}
	for _, l := range lists {
		for i, ps := range l.params {
			field := fmt.Sprintf("%s[%d]", l.field, i)
			if err := checkName(field+".name", ps.GetName()); err != nil {
				return err
			}
			if first, dup := seen[ps.GetName()]; dup {
				return problem.InvalidArgument(field+".name", "parameter %q is already declared as %s", ps.GetName(), first)
			}
			seen[ps.GetName()] = field
			if !ParameterTypes[ps.GetType()] {
				return problem.InvalidArgument(field+".type", "%s.type %q must be one of string, number, integer, boolean, object, array, locator", field, ps.GetType())
			}
		}
	}
	if d := p.GetDefaultTimeout(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return problem.InvalidArgument(prefix+".default_timeout", "%s.default_timeout must be a non-negative duration", prefix)
		}
	}
	if p.GetMaxAttempts() < 0 {
		return problem.InvalidArgument(prefix+".max_attempts", "%s.max_attempts must not be negative", prefix)
	}
	return nil
}
