// Package restapi serves the mediator's REST resources that are not the job
// API: the token exchange (POST /v1/auth/token), tenants and their API keys
// (admin; a tenant may manage its own keys), and usage (GET /v1/usage).
// Errors are problem JSON through pkg/problem like the rest of /v1.
package restapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/medius-platform/medius/pkg/api/openapi"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/auth"
	"github.com/medius-platform/medius/services/mediator/internal/tenants"
	"google.golang.org/grpc/codes"
)

// API holds what the handlers need.
type API struct {
	Authn   *auth.Authenticator
	Tokens  *auth.Tokens
	Tenants *tenants.Store
	// Usage answers GET /v1/usage; nil leaves the route out.
	Usage UsageReader
	// Watch serves GET /v1/jobs/{id}:watch (SSE); nil leaves it out.
	Watch Watcher
	// Version is the mediator's, given as the API document's version.
	Version string
}

// Mount adds the routes to mux.
func (a *API) Mount(mux *http.ServeMux) {
	if doc, err := Document(openapi.Document, a.Version); err == nil {
		mux.HandleFunc("GET /v1/openapi.json", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(doc)
		})
	}
	mux.HandleFunc("POST /v1/auth/token", a.token)
	mux.HandleFunc("GET /v1/tenants", a.admin(a.listTenants))
	mux.HandleFunc("POST /v1/tenants", a.admin(a.createTenant))
	mux.HandleFunc("GET /v1/tenants/{tenant}", a.admin(a.getTenant))
	mux.HandleFunc("DELETE /v1/tenants/{tenant}", a.admin(a.deleteTenant))
	mux.HandleFunc("PUT /v1/tenants/{tenant}/quota", a.admin(a.setQuota))
	mux.HandleFunc("PUT /v1/tenants/{tenant}/locator-roots", a.admin(a.setLocatorRoots))
	// A custom method on the tenant's webhook secret, in the AIP form the
	// job API uses (:cancel); the last segment is a literal, so a ServeMux
	// pattern expresses it.
	mux.HandleFunc("POST /v1/tenants/{tenant}/webhook-secret:rotate", a.admin(a.rotateWebhookSecret))
	mux.HandleFunc("GET /v1/tenants/{tenant}/keys", a.ownerOrAdmin(a.listKeys))
	mux.HandleFunc("POST /v1/tenants/{tenant}/keys", a.ownerOrAdmin(a.createKey))
	mux.HandleFunc("DELETE /v1/tenants/{tenant}/keys/{client}", a.ownerOrAdmin(a.revokeKey))
	if a.Watch != nil {
		// ServeMux patterns cannot say "{id}:watch": the gateway routes
		// that form here (gateway.WatchPath).
		mux.HandleFunc("GET /v1/jobs/{id}/watch", a.tenantOnly(a.watch))
	}
	if a.Usage != nil {
		mux.HandleFunc("GET /v1/usage", a.tenantOnly(a.usage))
	}
}

// Principal authenticates r's bearer credential.
func (a *API) Principal(r *http.Request) (auth.Principal, error) {
	return a.Authn.Authenticate(r.Context(), auth.BearerFrom(r.Header.Get("Authorization")))
}

func (a *API) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := a.Principal(r)
		if err != nil {
			problem.WriteError(r.Context(), w, err)
			return
		}
		if !p.Admin {
			problem.WriteError(r.Context(), w, problem.New(codes.PermissionDenied, "admin-only", "Permission denied", "only the admin credential manages tenants"))
			return
		}
		h(w, r.WithContext(auth.WithPrincipal(r.Context(), p)))
	}
}

// ownerOrAdmin lets a tenant manage its own keys. Another tenant's keys
// answer 404 like anything else of another tenant.
func (a *API) ownerOrAdmin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := a.Principal(r)
		if err != nil {
			problem.WriteError(r.Context(), w, err)
			return
		}
		if !p.Admin && p.Tenant != r.PathValue("tenant") {
			problem.WriteError(r.Context(), w, problem.NotFound("tenant", r.PathValue("tenant")))
			return
		}
		h(w, r.WithContext(auth.WithPrincipal(r.Context(), p)))
	}
}

func (a *API) tenantOnly(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := a.Principal(r)
		if err != nil {
			problem.WriteError(r.Context(), w, err)
			return
		}
		ctx := auth.WithPrincipal(r.Context(), p)
		if _, err := auth.TenantFrom(ctx); err != nil {
			problem.WriteError(ctx, w, err)
			return
		}
		h(w, r.WithContext(ctx))
	}
}

// WriteJSON answers v with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return &problem.Error{Code: codes.InvalidArgument, Type: "malformed-body", Title: "Malformed request body", Detail: err.Error()}
	}
	return nil
}

// requestStoreError maps a store failure of request r, naming the tenant or
// key of its path that was not found.
func requestStoreError(r *http.Request, err error) error {
	switch {
	case errors.Is(err, tenants.ErrTenantNotFound) && r.PathValue("tenant") != "":
		return problem.NotFound("tenant", r.PathValue("tenant"))
	case errors.Is(err, tenants.ErrClientNotFound) && r.PathValue("client") != "":
		return problem.NotFound("api-key", r.PathValue("client"))
	}
	return storeError(r.Context(), err)
}

// storeError maps a tenants store failure.
func storeError(ctx context.Context, err error) error {
	var pe *problem.Error
	switch {
	case errors.As(err, &pe), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.Is(err, tenants.ErrTenantNotFound):
		return problem.NotFound("tenant", "")
	case errors.Is(err, tenants.ErrClientNotFound):
		return problem.NotFound("api-key", "")
	case errors.Is(err, tenants.ErrTenantExists):
		return problem.New(codes.AlreadyExists, "tenant-exists", "Conflict", "a tenant with that id exists")
	case errors.Is(err, tenants.ErrTenantRetired):
		return problem.New(codes.AlreadyExists, "tenant-id-retired", "Conflict",
			"a deleted tenant had that id, and its jobs and usage are kept under it: choose another id")
	}
	return problem.Unavailable("tenant store unavailable", err)
}

// TokenResponse answers POST /v1/auth/token (OAuth 2 client credentials
// shape, so standard clients understand it).
type TokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
}

// Exchange verifies a client id and secret and issues a token.
func (a *API) Exchange(ctx context.Context, clientID, secret string) (string, time.Time, error) {
	if clientID == "" || secret == "" {
		return "", time.Time{}, problem.Unauthenticated("client id and secret are required")
	}
	c, err := a.Tenants.VerifySecret(ctx, clientID, secret)
	if errors.Is(err, tenants.ErrClientNotFound) {
		return "", time.Time{}, problem.Unauthenticated("invalid client id or secret")
	}
	if err != nil {
		return "", time.Time{}, storeError(ctx, err)
	}
	return a.Tokens.Issue(c.Tenant, c.ID)
}

// token accepts the credentials as JSON {"clientId","clientSecret"}, as an
// OAuth form (client_id, client_secret) or as HTTP Basic.
func (a *API) token(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id, secret, ok := r.BasicAuth()
	if !ok {
		if strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
			if err := r.ParseForm(); err != nil {
				problem.WriteError(ctx, w, problem.InvalidArgument("body", "malformed form"))
				return
			}
			id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
		} else {
			var body struct {
				ClientID     string `json:"clientId"`
				ClientSecret string `json:"clientSecret"`
			}
			if err := decode(r, &body); err != nil {
				problem.WriteError(ctx, w, err)
				return
			}
			id, secret = body.ClientID, body.ClientSecret
		}
	}
	tok, exp, err := a.Exchange(ctx, id, secret)
	if err != nil {
		problem.WriteError(ctx, w, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	WriteJSON(w, http.StatusOK, TokenResponse{AccessToken: tok, TokenType: "Bearer", ExpiresIn: int64(time.Until(exp).Round(time.Second) / time.Second)})
}

func (a *API) listTenants(w http.ResponseWriter, r *http.Request) {
	ts, err := a.Tenants.Tenants(r.Context())
	if err != nil {
		problem.WriteError(r.Context(), w, requestStoreError(r, err))
		return
	}
	WriteJSON(w, http.StatusOK, map[string]any{"tenants": ts})
}

func (a *API) createTenant(w http.ResponseWriter, r *http.Request) {
	var t tenants.Tenant
	if err := decode(r, &t); err != nil {
		problem.WriteError(r.Context(), w, err)
		return
	}
	t, err := a.Tenants.CreateTenant(r.Context(), t)
	if err != nil {
		problem.WriteError(r.Context(), w, requestStoreError(r, err))
		return
	}
	WriteJSON(w, http.StatusCreated, t)
}

func (a *API) getTenant(w http.ResponseWriter, r *http.Request) {
	t, err := a.Tenants.Tenant(r.Context(), r.PathValue("tenant"))
	if err != nil {
		problem.WriteError(r.Context(), w, requestStoreError(r, err))
		return
	}
	WriteJSON(w, http.StatusOK, t)
}

func (a *API) deleteTenant(w http.ResponseWriter, r *http.Request) {
	if err := a.Tenants.DeleteTenant(r.Context(), r.PathValue("tenant")); err != nil {
		problem.WriteError(r.Context(), w, requestStoreError(r, err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) setQuota(w http.ResponseWriter, r *http.Request) {
	var q tenants.Quota
	if err := decode(r, &q); err != nil {
		problem.WriteError(r.Context(), w, err)
		return
	}
	t, err := a.Tenants.SetQuota(r.Context(), r.PathValue("tenant"), q)
	if err != nil {
		problem.WriteError(r.Context(), w, requestStoreError(r, err))
		return
	}
	WriteJSON(w, http.StatusOK, t)
}

// LocatorRootsRequest is the body of PUT /v1/tenants/{tenant}/locator-roots.
type LocatorRootsRequest struct {
	// Roots replace the tenant's; none (or an empty list) clears them.
	Roots []string `json:"roots"`
}

// setLocatorRoots replaces the tenant's locator roots and answers the
// tenant. Job creation on this replica applies them at once, on others
// within tenants.QuotaTTL.
func (a *API) setLocatorRoots(w http.ResponseWriter, r *http.Request) {
	var body LocatorRootsRequest
	if err := decode(r, &body); err != nil {
		problem.WriteError(r.Context(), w, err)
		return
	}
	t, err := a.Tenants.SetLocatorRoots(r.Context(), r.PathValue("tenant"), body.Roots)
	if err != nil {
		problem.WriteError(r.Context(), w, requestStoreError(r, err))
		return
	}
	WriteJSON(w, http.StatusOK, t)
}

// rotateWebhookSecret answers the tenant with its new secret. The request
// has no fields: its body is empty or {}.
func (a *API) rotateWebhookSecret(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength != 0 {
		var body struct{}
		if err := decode(r, &body); err != nil {
			problem.WriteError(r.Context(), w, err)
			return
		}
	}
	t, err := a.Tenants.RotateWebhookSecret(r.Context(), r.PathValue("tenant"))
	if err != nil {
		problem.WriteError(r.Context(), w, requestStoreError(r, err))
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	WriteJSON(w, http.StatusOK, t)
}

// KeyResponse shows a new key: the only time its secret is shown.
type KeyResponse struct {
	ClientID     string    `json:"clientId"`
	ClientSecret string    `json:"clientSecret,omitempty"`
	Tenant       string    `json:"tenant"`
	Name         string    `json:"name,omitempty"`
	CreateTime   time.Time `json:"createTime"`
}

func (a *API) listKeys(w http.ResponseWriter, r *http.Request) {
	tenant := r.PathValue("tenant")
	if _, err := a.Tenants.Tenant(r.Context(), tenant); err != nil {
		problem.WriteError(r.Context(), w, requestStoreError(r, err))
		return
	}
	cs, err := a.Tenants.Clients(r.Context(), tenant)
	if err != nil {
		problem.WriteError(r.Context(), w, requestStoreError(r, err))
		return
	}
	out := make([]KeyResponse, 0, len(cs))
	for _, c := range cs {
		out = append(out, KeyResponse{ClientID: c.ID, Tenant: c.Tenant, Name: c.Name, CreateTime: c.CreateTime})
	}
	WriteJSON(w, http.StatusOK, map[string]any{"keys": out})
}

func (a *API) createKey(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Name string `json:"name"`
	}
	if r.ContentLength != 0 {
		if err := decode(r, &body); err != nil {
			problem.WriteError(r.Context(), w, err)
			return
		}
	}
	c, secret, err := a.Tenants.NewKey(r.Context(), r.PathValue("tenant"), body.Name)
	if err != nil {
		problem.WriteError(r.Context(), w, requestStoreError(r, err))
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	WriteJSON(w, http.StatusCreated, KeyResponse{ClientID: c.ID, ClientSecret: secret, Tenant: c.Tenant, Name: c.Name, CreateTime: c.CreateTime})
}

func (a *API) revokeKey(w http.ResponseWriter, r *http.Request) {
	if err := a.Tenants.RevokeClient(r.Context(), r.PathValue("tenant"), r.PathValue("client")); err != nil {
		problem.WriteError(r.Context(), w, requestStoreError(r, err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
