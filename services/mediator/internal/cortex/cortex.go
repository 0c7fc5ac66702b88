// Package cortex serves the Dalet Media Cortex mediator API under /cortex, as
// ../shared/specs/dalet-cortex-openapi.yaml describes it, so the published
// Cortex client SDKs work by pointing their base URL at Medius:
//
//	POST /cortex/auth/access-token   headers client, secret -> 201 Token
//	POST /cortex/jobs                JobMediatorInput -> 201 MediatorJob
//	GET  /cortex/jobs/{jobId}        -> 200 MediatorJob
//	GET  /cortex/job-types           header ProjectServiceId -> 200 [JobType]
//
// A Cortex job becomes a Medius job through the same JobService as /v1 (same
// validation, quota, idempotency and tenant scoping); this package only
// translates. The projectServiceId is the Medius tenant.
package cortex

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/auth"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"
)

// Prefix of every Cortex route.
const Prefix = "/cortex"

// Cortex job profiles and the output types they produce.
const (
	ProfileSpeechToText  = "MediaCortexSpeechToText"
	ProfileVideoAnalysis = "MediaCortexVideoAnalysis"
)

// DefaultProfiles maps Cortex job profiles to Medius profiles.
var DefaultProfiles = map[string]string{
	ProfileSpeechToText:  "SpeechToText",
	ProfileVideoAnalysis: "DetectShots",
}

// outputType names the jobOutputType of each Cortex profile.
var outputType = map[string]string{
	ProfileSpeechToText:  "SpeechToTextOutput",
	ProfileVideoAnalysis: "VideoAnalysisOutput",
}

// output pairs a Cortex output locator with the Medius locator carrying it:
// in the job input it says where the worker writes that output, exactly
// (the worker profiles' per-output locators, see job-worker SpeechToText
// and DetectShots), and the worker reports what it wrote under the same
// name in the job output.
type output struct {
	cortex string // field of the SpeechToTextOutput / VideoAnalysisOutput
	medius string // input and output locator name
}

// speechOutputs are the formats a SpeechToTextOutput can request.
var speechOutputs = []output{
	{"jsonFormat", "jsonOutputFile"},
	{"ttmlFormat", "ttmlOutputFile"},
	{"srtFormat", "srtOutputFile"},
	{"textFormat", "textOutputFile"},
	{"draftjsFormat", "draftjsOutputFile"},
}

// videoOutput is VideoAnalysisInput's outputLocation, one JSON file,
// reported as VideoAnalysisOutput's outputFile.
var videoOutput = output{"outputFile", "outputFile"}

// outputsOf lists the outputs a job of Cortex profile can report.
func outputsOf(profile string) []output {
	switch profile {
	case ProfileSpeechToText:
		return speechOutputs
	case ProfileVideoAnalysis:
		return []output{videoOutput}
	}
	return nil
}

// Tag keys kept on Medius jobs created through Cortex.
const (
	tagProfile  = "cortex.jobProfile"
	tagQuantity = "cortex.quantity"
	// tagS3 + a Cortex output field keeps the awsS3Bucket/awsS3Key the
	// client gave beside the httpEndpoint the worker writes to, so the
	// jobOutput names the output as the client did.
	tagS3 = "cortex.s3."
	// maxTagValue is the mediator's limit on a tag value.
	maxTagValue = 256
)

// Jobs is the job API the front-end translates to (jobapi.Server).
type Jobs interface {
	CreateJob(ctx context.Context, req *jobsv1.CreateJobRequest) (*jobsv1.Job, error)
	GetJob(ctx context.Context, req *jobsv1.GetJobRequest) (*jobsv1.Job, error)
}

// Exchanger turns a client id and secret into a token.
type Exchanger interface {
	Exchange(ctx context.Context, clientID, secret string) (string, time.Time, error)
}

// Handler serves /cortex.
type Handler struct {
	Jobs   Jobs
	Authn  *auth.Authenticator
	Tokens Exchanger
	// Profiles maps Cortex profiles to Medius profiles (DefaultProfiles
	// when nil).
	Profiles map[string]string
	// S3 tells whether the workers can reach S3 (awsS3Bucket/awsS3Key
	// locators are used when a locator has no httpEndpoint).
	S3  bool
	now func() time.Time
}

// Mount adds the routes to mux.
func (h *Handler) Mount(mux *http.ServeMux) {
	mux.HandleFunc("POST "+Prefix+"/auth/access-token", h.accessToken)
	mux.HandleFunc("POST "+Prefix+"/jobs", h.authed(h.createJob))
	mux.HandleFunc("GET "+Prefix+"/jobs/{jobId}", h.authed(h.getJob))
	mux.HandleFunc("GET "+Prefix+"/job-types", h.authed(h.jobTypes))
	mux.HandleFunc(Prefix+"/", func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, http.StatusNotFound, "route-not-found", "Not Found", fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path), "")
	})
}

// Token is the spec's Token.
type Token struct {
	Authorization string `json:"authorization"`
	Expires       int64  `json:"expires"`
}

func (h *Handler) accessToken(w http.ResponseWriter, r *http.Request) {
	client, secret := r.Header.Get("client"), r.Header.Get("secret")
	if client == "" || secret == "" {
		writeProblem(w, http.StatusUnauthorized, "unauthenticated", "Unauthenticated", "the client and secret headers are required", "")
		return
	}
	tok, exp, err := h.Tokens.Exchange(r.Context(), client, secret)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	// expires is the token's lifetime in seconds, like the OAuth expires_in.
	writeJSON(w, http.StatusCreated, Token{Authorization: "Bearer " + tok, Expires: int64(math.Round(time.Until(exp).Seconds()))})
}

// authed authenticates the Authorization header: "Bearer <token>" as the
// access-token answer gives it, or the bare token, which some SDKs send.
func (h *Handler) authed(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		hdr := r.Header.Get("Authorization")
		cred := auth.BearerFrom(hdr)
		if cred == "" && !strings.Contains(strings.TrimSpace(hdr), " ") {
			cred = strings.TrimSpace(hdr)
		}
		p, err := h.Authn.Authenticate(r.Context(), cred)
		if err != nil {
			h.writeError(w, r, err)
			return
		}
		ctx := auth.WithPrincipal(r.Context(), p)
		if _, err := auth.TenantFrom(ctx); err != nil {
			h.writeError(w, r, err)
			return
		}
		next(w, r.WithContext(ctx))
	}
}

// Locator is the spec's FIMS-style locator.
type Locator struct {
	AWSS3Bucket  string `json:"awsS3Bucket,omitempty"`
	AWSS3Key     string `json:"awsS3Key,omitempty"`
	HTTPEndpoint string `json:"httpEndpoint,omitempty"`
}

// JobMediatorInput is the request body of POST /jobs. Unknown fields are
// tolerated, as Cortex clients send more than the schema lists.
type JobMediatorInput struct {
	ProjectServiceID     *string         `json:"projectServiceId"`
	Quantity             *json.Number    `json:"quantity"`
	Tracking             json.RawMessage `json:"tracking"`
	NotificationEndpoint string          `json:"notificationEndpoint"`
	Job                  *struct {
		JobType          string          `json:"jobType"`
		JobProfile       string          `json:"jobProfile"`
		RegionName       string          `json:"regionName"`
		MaxRegionLatency *json.Number    `json:"maxRegionLatency"`
		JobInput         json.RawMessage `json:"jobInput"`
	} `json:"job"`
}

// jobInput holds the fields of VideoAnalysisInput and SpeechToTextInput.
type jobInput struct {
	JobInputType   string          `json:"jobInputType"`
	InputFile      *Locator        `json:"inputFile"`
	OutputLocation json.RawMessage `json:"outputLocation"`
}

// MediatorJob is the spec's MediatorJob.
type MediatorJob struct {
	ID           string         `json:"id"`
	DateCreated  string         `json:"dateCreated"`
	DateModified string         `json:"dateModified"`
	Quantity     int64          `json:"quantity"`
	Status       JobStatus      `json:"status"`
	JobOutput    map[string]any `json:"jobOutput,omitempty"`
}

// JobStatus is the spec's JobMediatorStatus.
type JobStatus struct {
	Status        string `json:"status"`
	StatusMessage string `json:"statusMessage"`
	Progress      int32  `json:"progress"`
}

// JobType is the spec's JobType (named JobTypeProfiles). The schema lists
// "name" but requires "jobType", so both carry the type.
type JobType struct {
	Name     string   `json:"name"`
	JobType  string   `json:"jobType"`
	Profiles []string `json:"profiles"`
}

const maxBody = 1 << 20

func (h *Handler) createJob(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	tenant, _ := auth.TenantFrom(ctx)
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		writeProblem(w, http.StatusRequestEntityTooLarge, "body-too-large", "Request body too large", fmt.Sprintf("request bodies are limited to %d bytes", maxBody), "")
		return
	}
	var in JobMediatorInput
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.UseNumber()
	if err := dec.Decode(&in); err != nil {
		writeProblem(w, http.StatusBadRequest, "malformed-body", "Malformed request body", "the body is not a JobMediatorInput: "+err.Error(), "")
		return
	}
	job, err := h.translate(&in, tenant)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	created, err := h.Jobs.CreateJob(ctx, &jobsv1.CreateJobRequest{Job: job, RequestId: requestID(&in)})
	if err != nil {
		h.writeError(w, r, inCortexTerms(in.Job.JobProfile, err))
		return
	}
	writeJSON(w, http.StatusCreated, toMediatorJob(created))
}

// inCortexTerms names the Cortex field a locator refusal of the job API is
// about (job.input.locators[inputFile] is job.jobInput.inputFile), and makes
// a locator outside the project's roots (403 elsewhere) a 400: the spec
// answers POST /jobs with 201, 400, 401 or 502 only.
func inCortexTerms(profile string, err error) error {
	var pe *problem.Error
	if !errors.As(err, &pe) {
		return err
	}
	name, ok := strings.CutPrefix(pe.Field, "job.input.locators[")
	if !ok {
		return err
	}
	name = strings.TrimSuffix(name, "]")
	out := *pe
	switch {
	case name == "inputFile":
		out.Field = "job.jobInput.inputFile"
	case profile == ProfileVideoAnalysis && name == videoOutput.medius:
		out.Field = "job.jobInput.outputLocation"
	default:
		for _, o := range outputsOf(profile) {
			if o.medius == name {
				out.Field = "job.jobInput.outputLocation." + o.cortex
			}
		}
	}
	if out.Code == codes.PermissionDenied {
		out.Code = codes.InvalidArgument
	}
	return &out
}

// requestID makes a Cortex tracking object the idempotency key: the spec
// says it identifies the job uniquely. The profile is part of the key, since
// one title is commonly sent to several profiles with the same tracking.
func requestID(in *JobMediatorInput) string {
	t := strings.TrimSpace(string(in.Tracking))
	if t == "" || t == "null" || t == "{}" || t == `""` {
		return ""
	}
	var v any
	if json.Unmarshal(in.Tracking, &v) != nil {
		return ""
	}
	canon, _ := json.Marshal(v) // map keys sorted: the same object, the same key
	sum := sha256.Sum256(append([]byte(in.Job.JobProfile+"\x00"), canon...))
	return "cortex-tracking-" + hex.EncodeToString(sum[:])
}

func badRequest(field, format string, args ...any) error {
	return problem.InvalidArgument(field, format, args...)
}

// translate checks the required fields and builds the Medius job.
func (h *Handler) translate(in *JobMediatorInput, tenant string) (*jobsv1.Job, error) {
	switch {
	case in.ProjectServiceID == nil || *in.ProjectServiceID == "":
		return nil, badRequest("projectServiceId", "projectServiceId is required")
	case *in.ProjectServiceID != tenant:
		return nil, badRequest("projectServiceId", "projectServiceId %q does not match the project of the access token", *in.ProjectServiceID)
	case in.Quantity == nil:
		return nil, badRequest("quantity", "quantity is required")
	case in.Job == nil:
		return nil, badRequest("job", "job is required")
	case in.Job.JobProfile == "":
		return nil, badRequest("job.jobProfile", "job.jobProfile is required")
	}
	if _, err := in.Quantity.Int64(); err != nil {
		return nil, badRequest("quantity", "quantity must be an integer")
	}
	profiles := h.Profiles
	if profiles == nil {
		profiles = DefaultProfiles
	}
	profile, ok := profiles[in.Job.JobProfile]
	if !ok {
		known := make([]string, 0, len(profiles))
		for k := range profiles {
			known = append(known, k)
		}
		slices.Sort(known)
		return nil, badRequest("job.jobProfile", "job profile %q is not offered; offered: %s", in.Job.JobProfile, strings.Join(known, ", "))
	}
	if len(in.Job.JobInput) == 0 {
		return nil, badRequest("job.jobInput", "job.jobInput is required")
	}
	var ji jobInput
	if err := json.Unmarshal(in.Job.JobInput, &ji); err != nil {
		return nil, badRequest("job.jobInput", "job.jobInput is not an object: %v", err)
	}
	var params map[string]any
	_ = json.Unmarshal(in.Job.JobInput, &params)

	job := &jobsv1.Job{
		Profile:              profile,
		JobType:              in.Job.JobType,
		Region:               in.Job.RegionName,
		NotificationEndpoint: in.NotificationEndpoint,
		Input:                &jobsv1.JobInput{Locators: map[string]*jobsv1.Locator{}},
		Tags:                 map[string]string{tagProfile: in.Job.JobProfile, tagQuantity: in.Quantity.String()},
	}
	if ji.InputFile == nil {
		return nil, badRequest("job.jobInput.inputFile", "job.jobInput.inputFile is required")
	}
	u, err := h.locatorURL("job.jobInput.inputFile", ji.InputFile)
	if err != nil {
		return nil, err
	}
	job.Input.Locators["inputFile"] = &jobsv1.Locator{Url: u}
	if len(ji.OutputLocation) == 0 || string(ji.OutputLocation) == "null" {
		return nil, badRequest("job.jobInput.outputLocation", "job.jobInput.outputLocation is required")
	}
	// Where the worker writes: VideoAnalysis names one file, SpeechToText
	// one per format wanted. Each travels as the locator of that output, so
	// the worker writes exactly there (a signed URL names one object) and
	// writes nothing else.
	if in.Job.JobProfile == ProfileSpeechToText {
		// Fields other than the formats (the spec's jobOutputType, or what
		// a client adds) are tolerated.
		var out map[string]json.RawMessage
		if err := json.Unmarshal(ji.OutputLocation, &out); err != nil {
			return nil, badRequest("job.jobInput.outputLocation", "outputLocation must be a SpeechToTextOutput object")
		}
		var names []string
		for _, o := range speechOutputs {
			names = append(names, o.cortex)
			raw, ok := out[o.cortex]
			if !ok || string(raw) == "null" {
				continue
			}
			field := "job.jobInput.outputLocation." + o.cortex
			var l Locator
			if err := json.Unmarshal(raw, &l); err != nil {
				return nil, badRequest(field, "%s must be a Locator", field)
			}
			if err := h.addOutput(job, field, o, &l); err != nil {
				return nil, err
			}
		}
		if len(job.Input.Locators) == 1 {
			return nil, badRequest("job.jobInput.outputLocation", "outputLocation names no output format (%s)", strings.Join(names, ", "))
		}
	} else {
		var out Locator
		if err := json.Unmarshal(ji.OutputLocation, &out); err != nil {
			return nil, badRequest("job.jobInput.outputLocation", "outputLocation must be a Locator")
		}
		if err := h.addOutput(job, "job.jobInput.outputLocation", videoOutput, &out); err != nil {
			return nil, err
		}
	}
	// Everything else of the job input (language, dataFilter, vocabulary,
	// startOfMaterial...) goes to the worker as parameters.
	delete(params, "inputFile")
	delete(params, "outputLocation")
	delete(params, "jobInputType")
	if len(params) > 0 {
		st, err := structpb.NewStruct(params)
		if err != nil {
			return nil, badRequest("job.jobInput", "job.jobInput: %v", err)
		}
		job.Input.Parameters = st
	}
	if t := strings.TrimSpace(string(in.Tracking)); t != "" && t != "null" {
		var v any
		if err := json.Unmarshal(in.Tracking, &v); err != nil {
			return nil, badRequest("tracking", "tracking is not JSON")
		}
		tv, err := structpb.NewValue(v)
		if err != nil {
			return nil, badRequest("tracking", "tracking: %v", err)
		}
		job.Tracking = tv
	}
	return job, nil
}

// locatorURL picks the URL a worker uses: the httpEndpoint (GET for inputs,
// PUT for outputs), else s3://bucket/key when S3 is configured.
func (h *Handler) locatorURL(field string, l *Locator) (string, error) {
	if l.HTTPEndpoint != "" {
		u, err := url.Parse(l.HTTPEndpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "", badRequest(field+".httpEndpoint", "httpEndpoint must be an absolute http(s) URL")
		}
		return l.HTTPEndpoint, nil
	}
	if l.AWSS3Bucket != "" && l.AWSS3Key != "" {
		if !h.S3 {
			return "", badRequest(field+".httpEndpoint", "httpEndpoint is required: this deployment has no S3 endpoint configured")
		}
		return "s3://" + l.AWSS3Bucket + "/" + strings.TrimPrefix(l.AWSS3Key, "/"), nil
	}
	return "", badRequest(field, "a locator needs an httpEndpoint (or awsS3Bucket and awsS3Key)")
}

// addOutput makes the Cortex output locator l the job's locator of output
// o, keeping an awsS3Bucket/awsS3Key given beside the httpEndpoint used.
func (h *Handler) addOutput(job *jobsv1.Job, field string, o output, l *Locator) error {
	u, err := h.locatorURL(field, l)
	if err != nil {
		return err
	}
	job.Input.Locators[o.medius] = &jobsv1.Locator{Url: u}
	if l.HTTPEndpoint != "" && l.AWSS3Bucket != "" && l.AWSS3Key != "" {
		// A key too long for a tag is only left out of the jobOutput.
		if s3 := "s3://" + l.AWSS3Bucket + "/" + strings.TrimPrefix(l.AWSS3Key, "/"); len(s3) <= maxTagValue {
			job.Tags[tagS3+o.cortex] = s3
		}
	}
	return nil
}

// cortexLocator names a locator the worker wrote as a Cortex Locator: an
// http(s) URL is the httpEndpoint (with the bucket and key the client gave
// beside it, if any), s3://bucket/key the awsS3Bucket and awsS3Key. A
// scheme Cortex cannot express gives nil.
func cortexLocator(raw, s3 string) *Locator {
	u, err := url.Parse(raw)
	if err != nil {
		return nil
	}
	bucketKey := func(s string) (string, string) {
		b, k, _ := strings.Cut(strings.TrimPrefix(s, "s3://"), "/")
		return b, k
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "https":
		l := &Locator{HTTPEndpoint: raw}
		if s3 != "" {
			l.AWSS3Bucket, l.AWSS3Key = bucketKey(s3)
		}
		return l
	case "s3":
		l := &Locator{}
		l.AWSS3Bucket, l.AWSS3Key = bucketKey(raw)
		return l
	}
	return nil
}

func (h *Handler) getJob(w http.ResponseWriter, r *http.Request) {
	job, err := h.Jobs.GetJob(r.Context(), &jobsv1.GetJobRequest{Id: r.PathValue("jobId")})
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toMediatorJob(job))
}

func (h *Handler) jobTypes(w http.ResponseWriter, r *http.Request) {
	tenant, _ := auth.TenantFrom(r.Context())
	psid := r.Header.Get("ProjectServiceId")
	if psid == "" {
		writeProblem(w, http.StatusBadRequest, "invalid-argument", "Invalid argument", "the ProjectServiceId header is required", "ProjectServiceId")
		return
	}
	if psid != tenant {
		writeProblem(w, http.StatusBadRequest, "invalid-argument", "Invalid argument", "ProjectServiceId does not match the project of the access token", "ProjectServiceId")
		return
	}
	profiles := h.Profiles
	if profiles == nil {
		profiles = DefaultProfiles
	}
	names := make([]string, 0, len(profiles))
	for k := range profiles {
		names = append(names, k)
	}
	slices.Sort(names)
	writeJSON(w, http.StatusOK, []JobType{{Name: "AIJob", JobType: "AIJob", Profiles: names}})
}

// cortexStatus maps Medius statuses to the spec's enum, which has no
// CANCELED: a canceled job reads FAILED with a message saying so.
func cortexStatus(j *jobsv1.Job) (string, string) {
	msg := j.GetStatusMessage()
	switch j.GetStatus() {
	case jobsv1.JobStatus_JOB_STATUS_QUEUED:
		return "QUEUED", msg
	case jobsv1.JobStatus_JOB_STATUS_SCHEDULED:
		return "SCHEDULED", msg
	case jobsv1.JobStatus_JOB_STATUS_RUNNING:
		return "RUNNING", msg
	case jobsv1.JobStatus_JOB_STATUS_COMPLETED:
		return "COMPLETED", msg
	case jobsv1.JobStatus_JOB_STATUS_FAILED:
		if msg == "" && j.GetError() != nil {
			msg = strings.TrimSpace(j.GetError().GetTitle() + ": " + j.GetError().GetDetail())
		}
		return "FAILED", msg
	case jobsv1.JobStatus_JOB_STATUS_CANCELED:
		if msg == "" {
			msg = "canceled"
		}
		return "FAILED", msg
	}
	return "NEW", msg
}

func toMediatorJob(j *jobsv1.Job) MediatorJob {
	st, msg := cortexStatus(j)
	mj := MediatorJob{
		ID:           j.GetId(),
		DateCreated:  j.GetCreateTime().AsTime().UTC().Format("2006-01-02T15:04:05.000Z"),
		DateModified: j.GetUpdateTime().AsTime().UTC().Format("2006-01-02T15:04:05.000Z"),
		// Billing counts started seconds.
		Quantity: int64(math.Ceil(j.GetVerifiedQuantity())),
		Status:   JobStatus{Status: st, StatusMessage: msg, Progress: min(max(j.GetProgress(), 0), 100)},
	}
	profile := j.GetTags()[tagProfile]
	if typ, ok := outputType[profile]; ok {
		mj.JobOutput = map[string]any{"jobOutputType": typ}
	}
	// Once COMPLETED the outputs exist: name each one written.
	if mj.JobOutput != nil && j.GetStatus() == jobsv1.JobStatus_JOB_STATUS_COMPLETED {
		for _, o := range outputsOf(profile) {
			written := j.GetOutput().GetLocators()[o.medius].GetUrl()
			if l := cortexLocator(written, j.GetTags()[tagS3+o.cortex]); written != "" && l != nil {
				mj.JobOutput[o.cortex] = l
			}
		}
	}
	return mj
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeProblem(w http.ResponseWriter, code int, typ, title, detail, field string) {
	problem.Write(w, &jobsv1.Problem{Type: problem.TypePrefix + typ, Title: title, Detail: detail, Status: int32(code), Field: field})
}

// writeError answers err as problem JSON with the Cortex status codes: the
// spec answers a quota violation with 502.
func (h *Handler) writeError(w http.ResponseWriter, r *http.Request, err error) {
	p := problem.FromError(r.Context(), err)
	if p.Status == int32(problem.HTTPStatus(codes.ResourceExhausted)) {
		p.Status = http.StatusBadGateway
	}
	var pe *problem.Error
	if errors.As(err, &pe) && pe.Code == codes.InvalidArgument && p.Field == "" {
		p.Field = pe.Field
	}
	problem.Write(w, p)
}

// IsCortexJob tells a job submitted through /cortex.
func IsCortexJob(j *jobsv1.Job) bool { return j.GetTags()[tagProfile] != "" }

// MediatorJobJSON renders j as the spec's MediatorJob (the body of Cortex
// notifications).
func MediatorJobJSON(j *jobsv1.Job) ([]byte, error) { return json.Marshal(toMediatorJob(j)) }
