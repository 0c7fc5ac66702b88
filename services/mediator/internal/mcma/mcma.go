// Package mcma serves the service registry as EBU MCMA REST resources under
// /mcma on the mediator's HTTP port: Service and JobProfile documents with
// "@type", absolute ids, dateCreated/dateModified, pages of
// {"results", "nextPageStartToken"}, any other query parameter as an
// equality filter, and PUT as an upsert. An existing MCMA client only changes
// its services URL to <mediator>/mcma/services.
//
// Requests go to the mediator's own gRPC server (RegistryService proxy), so
// MCMA callers are authenticated and authorised exactly like gRPC and /v1
// callers: the x-mcma-api-key header (or Authorization: Bearer) carries the
// API key or token; reads need any credential, writes the admin one.
package mcma

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/problem"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Prefix is where the MCMA resources are served.
const Prefix = "/mcma"

// APIKeyHeader is the header MCMA clients send their API key in.
const APIKeyHeader = "x-mcma-api-key"

// RegistryID is the id segment of the virtual "Service Registry" service:
// MCMA's ResourceManager finds the Service and JobProfile endpoints through
// it, as in an MCMA deployment.
const RegistryID = "service-registry"

// afterRegistry is the page token after a first page that held only the
// registry's own entry (registry tokens are never this short).
const afterRegistry = "~"

// Page sizes: as the registry's (0 means the default, larger is capped).
const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

// reserved query parameters are paging and sorting, never filters (results
// are always in name order).
var reserved = map[string]bool{"pageSize": true, "pageStartToken": true, "sortBy": true, "sortAscending": true}

// Registry is the part of the registry API the MCMA resources use; the
// mediator passes a client of its own gRPC server.
type Registry interface {
	GetService(ctx context.Context, in *registryv1.GetServiceRequest, opts ...grpc.CallOption) (*registryv1.Service, error)
	ListServices(ctx context.Context, in *registryv1.ListServicesRequest, opts ...grpc.CallOption) (*registryv1.ListServicesResponse, error)
	CreateService(ctx context.Context, in *registryv1.CreateServiceRequest, opts ...grpc.CallOption) (*registryv1.Service, error)
	PutService(ctx context.Context, in *registryv1.PutServiceRequest, opts ...grpc.CallOption) (*registryv1.Service, error)
	DeleteService(ctx context.Context, in *registryv1.DeleteServiceRequest, opts ...grpc.CallOption) (*registryv1.DeleteServiceResponse, error)
	GetJobProfile(ctx context.Context, in *registryv1.GetJobProfileRequest, opts ...grpc.CallOption) (*registryv1.JobProfile, error)
	ListJobProfiles(ctx context.Context, in *registryv1.ListJobProfilesRequest, opts ...grpc.CallOption) (*registryv1.ListJobProfilesResponse, error)
	CreateJobProfile(ctx context.Context, in *registryv1.CreateJobProfileRequest, opts ...grpc.CallOption) (*registryv1.JobProfile, error)
	PutJobProfile(ctx context.Context, in *registryv1.PutJobProfileRequest, opts ...grpc.CallOption) (*registryv1.JobProfile, error)
	DeleteJobProfile(ctx context.Context, in *registryv1.DeleteJobProfileRequest, opts ...grpc.CallOption) (*registryv1.DeleteJobProfileResponse, error)
}

var _ Registry = registryv1.NewRegistryServiceClient(nil)

// API serves the MCMA resources.
type API struct {
	Registry Registry
	// BaseURL is the public URL of the mediator (e.g.
	// https://medius.example.com); ids are built from it. Empty: from the
	// request (Host, X-Forwarded-Proto/Host as set by a proxy).
	BaseURL string
}

// Mount adds the MCMA routes to mux.
func (a *API) Mount(mux *http.ServeMux) {
	mux.HandleFunc("GET "+Prefix+"/services", a.listServices)
	mux.HandleFunc("POST "+Prefix+"/services", a.createService)
	mux.HandleFunc("GET "+Prefix+"/services/{id}", a.getService)
	mux.HandleFunc("PUT "+Prefix+"/services/{id}", a.putService)
	mux.HandleFunc("DELETE "+Prefix+"/services/{id}", a.deleteService)
	mux.HandleFunc("GET "+Prefix+"/job-profiles", a.listProfiles)
	mux.HandleFunc("POST "+Prefix+"/job-profiles", a.createProfile)
	mux.HandleFunc("GET "+Prefix+"/job-profiles/{id}", a.getProfile)
	mux.HandleFunc("PUT "+Prefix+"/job-profiles/{id}", a.putProfile)
	mux.HandleFunc("DELETE "+Prefix+"/job-profiles/{id}", a.deleteProfile)
}

// --- documents ---

// ResourceEndpoint is an MCMA ResourceEndpoint.
type ResourceEndpoint struct {
	Type         string `json:"@type"`
	ResourceType string `json:"resourceType"`
	HTTPEndpoint string `json:"httpEndpoint"`
	AuthType     string `json:"authType,omitempty"`
}

// Service is an MCMA Service. jobTypes, regions, costPerUnit and
// defaultCapacity are Medius extensions (MCMA clients ignore them).
type Service struct {
	Type            string             `json:"@type"`
	ID              string             `json:"id,omitempty"`
	Name            string             `json:"name"`
	Resources       []ResourceEndpoint `json:"resources"`
	AuthType        string             `json:"authType,omitempty"`
	JobType         string             `json:"jobType,omitempty"`
	JobProfileIDs   []string           `json:"jobProfileIds"`
	DateCreated     *time.Time         `json:"dateCreated,omitempty"`
	DateModified    *time.Time         `json:"dateModified,omitempty"`
	JobTypes        []string           `json:"jobTypes,omitempty"`
	Regions         []string           `json:"regions,omitempty"`
	CostPerUnit     float64            `json:"costPerUnit,omitempty"`
	DefaultCapacity int32              `json:"defaultCapacity,omitempty"`
}

// JobParameter is an MCMA JobParameter.
type JobParameter struct {
	Type          string `json:"@type"`
	ParameterName string `json:"parameterName"`
	ParameterType string `json:"parameterType"`
}

// JobProfile is an MCMA JobProfile. jobType, description,
// defaultTimeoutSeconds and maxAttempts are Medius extensions.
type JobProfile struct {
	Type                    string         `json:"@type"`
	ID                      string         `json:"id,omitempty"`
	Name                    string         `json:"name"`
	InputParameters         []JobParameter `json:"inputParameters"`
	OptionalInputParameters []JobParameter `json:"optionalInputParameters"`
	OutputParameters        []JobParameter `json:"outputParameters"`
	DateCreated             *time.Time     `json:"dateCreated,omitempty"`
	DateModified            *time.Time     `json:"dateModified,omitempty"`
	JobType                 string         `json:"jobType,omitempty"`
	Description             string         `json:"description,omitempty"`
	DefaultTimeoutSeconds   float64        `json:"defaultTimeoutSeconds,omitempty"`
	MaxAttempts             int32          `json:"maxAttempts,omitempty"`
}

// Page is an MCMA query result.
type Page[T any] struct {
	Results            []T     `json:"results"`
	NextPageStartToken *string `json:"nextPageStartToken"`
}

// parameterType maps a Medius parameter type to MCMA's name for it.
func parameterType(t string) string {
	if t == "locator" {
		return "Locator"
	}
	return t
}

// mediusType maps an MCMA parameter type to Medius's: every kind of MCMA
// locator (Locator, AwsS3FileLocator, ...) is a locator.
func mediusType(t string) string {
	if strings.HasSuffix(t, "Locator") {
		return "locator"
	}
	return strings.ToLower(t)
}

func params(specs []*registryv1.ParameterSpec) []JobParameter {
	out := make([]JobParameter, 0, len(specs))
	for _, s := range specs {
		out = append(out, JobParameter{Type: "JobParameter", ParameterName: s.GetName(), ParameterType: parameterType(s.GetType())})
	}
	return out
}

func specs(ps []JobParameter) []*registryv1.ParameterSpec {
	out := make([]*registryv1.ParameterSpec, 0, len(ps))
	for _, p := range ps {
		out = append(out, &registryv1.ParameterSpec{Name: p.ParameterName, Type: mediusType(p.ParameterType)})
	}
	return out
}

func times(c, u interface{ AsTime() time.Time }, hasC, hasU bool) (*time.Time, *time.Time) {
	var dc, dm *time.Time
	if hasC {
		t := c.AsTime().UTC()
		dc = &t
	}
	if hasU {
		t := u.AsTime().UTC()
		dm = &t
	}
	return dc, dm
}

func (a *API) serviceDoc(base string, s *registryv1.Service) Service {
	d := Service{
		Type: "Service", ID: base + "/services/" + s.GetName(), Name: s.GetName(),
		Resources: []ResourceEndpoint{}, AuthType: s.GetAuthType(), JobProfileIDs: []string{},
		JobTypes: s.GetJobTypes(), Regions: s.GetRegions(), CostPerUnit: s.GetCostPerUnit(), DefaultCapacity: s.GetDefaultCapacity(),
	}
	if len(s.GetJobTypes()) > 0 {
		d.JobType = s.GetJobTypes()[0]
	}
	for _, r := range s.GetResources() {
		d.Resources = append(d.Resources, ResourceEndpoint{Type: "ResourceEndpoint", ResourceType: r.GetResourceType(), HTTPEndpoint: r.GetHttpEndpoint(), AuthType: r.GetAuthType()})
	}
	for _, p := range s.GetProfiles() {
		d.JobProfileIDs = append(d.JobProfileIDs, base+"/job-profiles/"+p)
	}
	d.DateCreated, d.DateModified = times(s.GetCreateTime(), s.GetUpdateTime(), s.GetCreateTime() != nil, s.GetUpdateTime() != nil)
	return d
}

// registryDoc is the virtual service through which MCMA clients find the
// Service and JobProfile endpoints.
func registryDoc(base string) Service {
	return Service{
		Type: "Service", ID: base + "/services/" + RegistryID, Name: "Service Registry",
		Resources: []ResourceEndpoint{
			{Type: "ResourceEndpoint", ResourceType: "Service", HTTPEndpoint: base + "/services"},
			{Type: "ResourceEndpoint", ResourceType: "JobProfile", HTTPEndpoint: base + "/job-profiles"},
		},
		JobProfileIDs: []string{},
	}
}

func profileDoc(base string, p *registryv1.JobProfile) JobProfile {
	d := JobProfile{
		Type: "JobProfile", ID: base + "/job-profiles/" + p.GetName(), Name: p.GetName(),
		InputParameters: params(p.GetInputParameters()), OptionalInputParameters: params(p.GetOptionalInputParameters()),
		OutputParameters: params(p.GetOutputParameters()),
		JobType:          p.GetJobType(), Description: p.GetDescription(), MaxAttempts: p.GetMaxAttempts(),
	}
	if t := p.GetDefaultTimeout(); t != nil {
		d.DefaultTimeoutSeconds = t.AsDuration().Seconds()
	}
	d.DateCreated, d.DateModified = times(p.GetCreateTime(), p.GetUpdateTime(), p.GetCreateTime() != nil, p.GetUpdateTime() != nil)
	return d
}

// nameFromID accepts a profile reference as an MCMA id URL (…/job-profiles/X)
// or a bare name.
func nameFromID(ref string) string {
	if i := strings.LastIndex(ref, "/job-profiles/"); i >= 0 {
		return ref[i+len("/job-profiles/"):]
	}
	return ref
}

func (d Service) registry() *registryv1.Service {
	s := &registryv1.Service{Name: d.Name, AuthType: d.AuthType, Regions: d.Regions, CostPerUnit: d.CostPerUnit, DefaultCapacity: d.DefaultCapacity}
	s.JobTypes = append(s.JobTypes, d.JobTypes...)
	if d.JobType != "" && !contains(s.JobTypes, d.JobType) {
		s.JobTypes = append([]string{d.JobType}, s.JobTypes...)
	}
	for _, id := range d.JobProfileIDs {
		s.Profiles = append(s.Profiles, nameFromID(id))
	}
	for _, r := range d.Resources {
		s.Resources = append(s.Resources, &registryv1.ResourceEndpoint{ResourceType: r.ResourceType, HttpEndpoint: r.HTTPEndpoint, AuthType: r.AuthType})
	}
	return s
}

func (d JobProfile) registry() (*registryv1.JobProfile, error) {
	p := &registryv1.JobProfile{
		Name: d.Name, JobType: d.JobType, Description: d.Description, MaxAttempts: d.MaxAttempts,
		InputParameters: specs(d.InputParameters), OptionalInputParameters: specs(d.OptionalInputParameters), OutputParameters: specs(d.OutputParameters),
	}
	if d.DefaultTimeoutSeconds < 0 {
		return nil, problem.InvalidArgument("defaultTimeoutSeconds", "defaultTimeoutSeconds must not be negative")
	}
	if d.DefaultTimeoutSeconds > 0 {
		p.DefaultTimeout = durationpb.New(time.Duration(d.DefaultTimeoutSeconds * float64(time.Second)))
	}
	return p, nil
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// --- plumbing ---

// base is the absolute URL of the MCMA root for ids.
func (a *API) base(r *http.Request) string {
	if a.BaseURL != "" {
		return strings.TrimSuffix(a.BaseURL, "/") + Prefix
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if p := r.Header.Get("X-Forwarded-Proto"); p == "https" || p == "http" {
		scheme = p
	}
	host := r.Host
	if h := r.Header.Get("X-Forwarded-Host"); h != "" && !strings.ContainsAny(h, "/ ,") {
		host = h
	}
	return scheme + "://" + host + Prefix
}

// callCtx carries the caller's credential to the mediator's gRPC server:
// x-mcma-api-key is MCMA's header, Authorization works as on /v1.
func callCtx(r *http.Request) context.Context {
	ctx := r.Context()
	if key := strings.TrimSpace(r.Header.Get(APIKeyHeader)); key != "" {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}
	if v := r.Header.Get("Authorization"); v != "" {
		return metadata.AppendToOutgoingContext(ctx, "authorization", v)
	}
	return ctx
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(r *http.Request, w http.ResponseWriter, err error) {
	problem.WriteError(r.Context(), w, err)
}

// decode reads a JSON body; unknown fields are tolerated, as MCMA documents
// carry properties (customProperties...) Medius does not keep.
func decode(r *http.Request, v any) error {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		return &problem.Error{Code: codes.InvalidArgument, Type: "malformed-body", Title: "Malformed request body", Detail: "request body is not a valid JSON document: " + err.Error()}
	}
	return nil
}

func readOnly() error {
	return problem.FailedPrecondition("read-only", "the Service Registry service is built in and cannot be changed")
}

// --- services ---

func (a *API) getService(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if id == RegistryID {
		// Still authenticated: a list call proves the credential.
		if _, err := a.Registry.ListServices(callCtx(r), &registryv1.ListServicesRequest{PageSize: 1}); err != nil {
			writeErr(r, w, err)
			return
		}
		writeJSON(w, http.StatusOK, registryDoc(a.base(r)))
		return
	}
	s, err := a.Registry.GetService(callCtx(r), &registryv1.GetServiceRequest{Name: id})
	if err != nil {
		writeErr(r, w, err)
		return
	}
	writeJSON(w, http.StatusOK, a.serviceDoc(a.base(r), s))
}

func (a *API) createService(w http.ResponseWriter, r *http.Request) {
	var d Service
	if err := decode(r, &d); err != nil {
		writeErr(r, w, err)
		return
	}
	if d.Name == "" {
		writeErr(r, w, problem.InvalidArgument("name", "name is required"))
		return
	}
	if d.Name == RegistryID {
		writeErr(r, w, readOnly())
		return
	}
	s, err := a.Registry.CreateService(callCtx(r), &registryv1.CreateServiceRequest{Service: d.registry()})
	if err != nil {
		writeErr(r, w, err)
		return
	}
	doc := a.serviceDoc(a.base(r), s)
	w.Header().Set("Location", doc.ID)
	writeJSON(w, http.StatusCreated, doc)
}

func (a *API) putService(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if id == RegistryID {
		writeErr(r, w, readOnly())
		return
	}
	var d Service
	if err := decode(r, &d); err != nil {
		writeErr(r, w, err)
		return
	}
	if d.Name == "" {
		d.Name = id
	}
	if d.Name != id {
		writeErr(r, w, problem.InvalidArgument("name", "name %q differs from the id in the URL %q", d.Name, id))
		return
	}
	s, err := a.Registry.PutService(callCtx(r), &registryv1.PutServiceRequest{Service: d.registry()})
	if err != nil {
		writeErr(r, w, err)
		return
	}
	writeJSON(w, http.StatusOK, a.serviceDoc(a.base(r), s))
}

func (a *API) deleteService(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if id == RegistryID {
		writeErr(r, w, readOnly())
		return
	}
	if _, err := a.Registry.DeleteService(callCtx(r), &registryv1.DeleteServiceRequest{Name: id}); err != nil {
		writeErr(r, w, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (a *API) listServices(w http.ResponseWriter, r *http.Request) {
	q, size, token, err := pageQuery(r)
	if err != nil {
		writeErr(r, w, err)
		return
	}
	base := a.base(r)
	ctx := callCtx(r)
	var out []Service
	if token == "" {
		// The registry's own entry heads the first page, as in MCMA.
		if doc := registryDoc(base); matches(doc, q) {
			out = append(out, doc)
		}
	}
	if token == afterRegistry {
		token = ""
	} else if token == "" && len(out) == size {
		// A page of one held just the registry's entry: the next page
		// starts with the registry's first service.
		writeJSON(w, http.StatusOK, page(out, afterRegistry))
		return
	}
	next, err := fill(size-len(out), token, func(n int32, tok string) ([]Service, string, error) {
		resp, err := a.Registry.ListServices(ctx, &registryv1.ListServicesRequest{JobType: q.Get("jobType"), PageSize: n, PageToken: tok})
		if err != nil {
			return nil, "", err
		}
		var docs []Service
		for _, s := range resp.GetServices() {
			if doc := a.serviceDoc(base, s); matches(doc, q) {
				docs = append(docs, doc)
			}
		}
		return docs, resp.GetNextPageToken(), nil
	}, &out)
	if err != nil {
		writeErr(r, w, err)
		return
	}
	writeJSON(w, http.StatusOK, page(out, next))
}

// --- job profiles ---

func (a *API) getProfile(w http.ResponseWriter, r *http.Request) {
	p, err := a.Registry.GetJobProfile(callCtx(r), &registryv1.GetJobProfileRequest{Name: r.PathValue("id")})
	if err != nil {
		writeErr(r, w, err)
		return
	}
	writeJSON(w, http.StatusOK, profileDoc(a.base(r), p))
}

func (a *API) createProfile(w http.ResponseWriter, r *http.Request) {
	var d JobProfile
	if err := decode(r, &d); err != nil {
		writeErr(r, w, err)
		return
	}
	if d.Name == "" {
		writeErr(r, w, problem.InvalidArgument("name", "name is required"))
		return
	}
	in, err := d.registry()
	if err != nil {
		writeErr(r, w, err)
		return
	}
	p, err := a.Registry.CreateJobProfile(callCtx(r), &registryv1.CreateJobProfileRequest{Profile: in})
	if err != nil {
		writeErr(r, w, err)
		return
	}
	doc := profileDoc(a.base(r), p)
	w.Header().Set("Location", doc.ID)
	writeJSON(w, http.StatusCreated, doc)
}

func (a *API) putProfile(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var d JobProfile
	if err := decode(r, &d); err != nil {
		writeErr(r, w, err)
		return
	}
	if d.Name == "" {
		d.Name = id
	}
	if d.Name != id {
		writeErr(r, w, problem.InvalidArgument("name", "name %q differs from the id in the URL %q", d.Name, id))
		return
	}
	in, err := d.registry()
	if err != nil {
		writeErr(r, w, err)
		return
	}
	p, err := a.Registry.PutJobProfile(callCtx(r), &registryv1.PutJobProfileRequest{Profile: in})
	if err != nil {
		writeErr(r, w, err)
		return
	}
	writeJSON(w, http.StatusOK, profileDoc(a.base(r), p))
}

func (a *API) deleteProfile(w http.ResponseWriter, r *http.Request) {
	if _, err := a.Registry.DeleteJobProfile(callCtx(r), &registryv1.DeleteJobProfileRequest{Name: r.PathValue("id")}); err != nil {
		writeErr(r, w, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (a *API) listProfiles(w http.ResponseWriter, r *http.Request) {
	q, size, token, err := pageQuery(r)
	if err != nil {
		writeErr(r, w, err)
		return
	}
	base := a.base(r)
	ctx := callCtx(r)
	var out []JobProfile
	next, err := fill(size, token, func(n int32, tok string) ([]JobProfile, string, error) {
		resp, err := a.Registry.ListJobProfiles(ctx, &registryv1.ListJobProfilesRequest{JobType: q.Get("jobType"), PageSize: n, PageToken: tok})
		if err != nil {
			return nil, "", err
		}
		var docs []JobProfile
		for _, p := range resp.GetProfiles() {
			if doc := profileDoc(base, p); matches(doc, q) {
				docs = append(docs, doc)
			}
		}
		return docs, resp.GetNextPageToken(), nil
	}, &out)
	if err != nil {
		writeErr(r, w, err)
		return
	}
	writeJSON(w, http.StatusOK, page(out, next))
}

// --- paging and filters ---

// pageQuery splits the query into filters, page size and start token.
func pageQuery(r *http.Request) (url.Values, int, string, error) {
	q := r.URL.Query()
	size := defaultPageSize
	if v := q.Get("pageSize"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return nil, 0, "", problem.InvalidArgument("pageSize", "pageSize must be a non-negative integer")
		}
		if n > 0 {
			size = min(n, maxPageSize)
		}
	}
	filters := url.Values{}
	for k, v := range q {
		if !reserved[k] {
			filters[k] = v
		}
	}
	return filters, size, q.Get("pageStartToken"), nil
}

// fill appends to out up to want filtered items, asking the registry for
// exactly what is still missing each time: every registry page is consumed
// whole, so the registry's token is a correct start for the next MCMA page
// (nothing skipped, nothing repeated) however selective the filters.
func fill[T any](want int, token string, list func(n int32, token string) ([]T, string, error), out *[]T) (string, error) {
	// Bounded: a filter matching nothing must not scan forever.
	for range 1000 {
		if want <= 0 {
			return token, nil
		}
		docs, next, err := list(int32(want), token)
		if err != nil {
			return "", err
		}
		*out = append(*out, docs...)
		want -= len(docs)
		token = next
		if token == "" {
			return "", nil
		}
	}
	return token, nil
}

func page[T any](results []T, next string) Page[T] {
	p := Page[T]{Results: results}
	if p.Results == nil {
		p.Results = []T{}
	}
	if next != "" {
		p.NextPageStartToken = &next
	}
	return p
}

// matches applies the equality filters to a document's JSON form: a scalar
// field equals the value, an array field contains it. Service jobType also
// matches any of the service's job types.
func matches(doc any, filters url.Values) bool {
	if len(filters) == 0 {
		return true
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return false
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return false
	}
	for k, vals := range filters {
		for _, v := range vals {
			ok := fieldMatches(m[k], v)
			if !ok && k == "jobType" {
				ok = fieldMatches(m["jobTypes"], v)
			}
			if !ok {
				return false
			}
		}
	}
	return true
}

func fieldMatches(f any, v string) bool {
	switch f := f.(type) {
	case nil:
		return false
	case string:
		return f == v
	case bool:
		return strconv.FormatBool(f) == v
	case float64:
		n, err := strconv.ParseFloat(v, 64)
		return err == nil && n == f
	case []any:
		for _, e := range f {
			if fieldMatches(e, v) {
				return true
			}
		}
	}
	return false
}
