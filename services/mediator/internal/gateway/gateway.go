// Package gateway serves the JobService as REST/JSON under /v1 (grpc-gateway)
// and the OpenAPI document. It proxies to the mediator's own gRPC server
// through a client connection, so authentication and error mapping happen in
// one place (the gRPC interceptors) for both surfaces.
package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/api/openapi"
	"github.com/medius-platform/medius/pkg/problem"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
)

// MaxBodyBytes bounds a request body: jobs carry locators, not media.
const MaxBodyBytes = 1 << 20

// New returns the REST handler proxying to the gRPC server behind conn. Each
// mount adds plain HTTP routes (more specific patterns win over /v1/).
func New(ctx context.Context, conn *grpc.ClientConn, mounts ...func(*http.ServeMux)) (http.Handler, error) {
	gw := runtime.NewServeMux(
		runtime.WithErrorHandler(problem.GatewayErrorHandler),
		runtime.WithRoutingErrorHandler(routingError),
		runtime.WithMarshalerOption(runtime.MIMEWildcard, bodyMarshaler{&runtime.JSONPb{
			// Clients see every field, zero or not, so absent and zero
			// mean the same thing to them.
			MarshalOptions: protojson.MarshalOptions{EmitDefaultValues: true},
			// A misspelt field is an error, not silently ignored.
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
		}}),
	)
	if err := jobsv1.RegisterJobServiceHandler(ctx, gw, conn); err != nil {
		return nil, fmt.Errorf("register job service gateway: %w", err)
	}
	if err := registryv1.RegisterRegistryServiceHandler(ctx, gw, conn); err != nil {
		return nil, fmt.Errorf("register registry service gateway: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/", watchPath(gw, mux))
	for _, m := range mounts {
		m(mux)
	}
	// A mount may serve a fuller document (routes it serves by hand).
	if _, pat := mux.Handler(&http.Request{Method: http.MethodGet, URL: &url.URL{Path: "/v1/openapi.json"}}); pat != "GET /v1/openapi.json" {
		mux.HandleFunc("GET /v1/openapi.json", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(openapi.Document)
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		routingError(r.Context(), nil, nil, w, r, http.StatusNotFound)
	})
	return limitBody(mux), nil
}

// watchPath sends GET /v1/jobs/{id}:watch (the AIP custom-method form the
// API documents) to the route /v1/jobs/{id}/watch, which a ServeMux pattern
// can express; everything else goes to the gateway.
func watchPath(gw http.Handler, mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/jobs/") && strings.HasSuffix(r.URL.Path, ":watch") {
			r2 := r.Clone(r.Context())
			r2.URL.Path = strings.TrimSuffix(r.URL.Path, ":watch") + "/watch"
			r2.URL.RawPath = ""
			mux.ServeHTTP(w, r2)
			return
		}
		gw.ServeHTTP(w, r)
	})
}

// bodyMarshaler names request body decoding failures as such, so
// problem.GatewayErrorHandler answers them as malformed-body problems rather
// than a generic invalid argument ("unexpected EOF" alone says little).
type bodyMarshaler struct{ *runtime.JSONPb }

func (m bodyMarshaler) NewDecoder(r io.Reader) runtime.Decoder {
	d := m.JSONPb.NewDecoder(r)
	return runtime.DecoderFunc(func(v any) error {
		err := d.Decode(v)
		if err != nil && !errors.Is(err, io.EOF) {
			// io.EOF (empty body) passes untouched: the gateway accepts it.
			return fmt.Errorf("unmarshal request body: %w", err)
		}
		return err
	})
}

// limitBody reads the body up front, at most MaxBodyBytes: a larger body is
// answered 413 here, since inside the gateway it would only surface as a
// decode error (400).
func limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			next.ServeHTTP(w, r)
			return
		}
		if r.ContentLength > MaxBodyBytes {
			writeTooLarge(w)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
		if err != nil {
			if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
				writeTooLarge(w)
				return
			}
			problem.Write(w, &jobsv1.Problem{Type: problem.TypePrefix + "malformed-body", Title: "Malformed request body",
				Detail: "cannot read request body", Status: http.StatusBadRequest})
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		next.ServeHTTP(w, r)
	})
}

func writeTooLarge(w http.ResponseWriter) {
	problem.Write(w, &jobsv1.Problem{Type: problem.TypePrefix + "body-too-large", Title: "Request body too large",
		Detail: fmt.Sprintf("request bodies are limited to %d bytes", MaxBodyBytes), Status: http.StatusRequestEntityTooLarge})
}

// routingError answers requests no route matches with problem JSON too.
func routingError(_ context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, r *http.Request, code int) {
	p := &jobsv1.Problem{Status: int32(code), Title: http.StatusText(code)}
	switch code {
	case http.StatusNotFound:
		p.Type, p.Detail = problem.TypePrefix+"route-not-found", fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path)
	case http.StatusMethodNotAllowed:
		p.Type, p.Detail = problem.TypePrefix+"method-not-allowed", fmt.Sprintf("method %s not allowed on %s", r.Method, r.URL.Path)
	default:
		p.Type, p.Detail = problem.TypePrefix+"bad-request", http.StatusText(code)
	}
	problem.Write(w, p)
}
