package restapi

import (
	"context"
	"net/http"
	"time"

	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/auth"
	"github.com/medius-platform/medius/services/mediator/internal/usage"
)

// UsageReader aggregates a tenant's usage records.
type UsageReader interface {
	Aggregate(ctx context.Context, tenant string, from, to time.Time, groupBy string) ([]usage.Group, error)
}

// UsageResponse answers GET /v1/usage.
type UsageResponse struct {
	Tenant   string        `json:"tenant"`
	From     *time.Time    `json:"from,omitempty"`
	To       *time.Time    `json:"to,omitempty"`
	GroupBy  string        `json:"groupBy,omitempty"`
	Groups   []usage.Group `json:"groups"`
	Jobs     int64         `json:"jobs"`
	Quantity float64       `json:"quantity"`
}

// parseTime accepts RFC 3339 or a date (2006-01-02, UTC midnight).
func parseTime(field, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, v); err == nil {
		return t, nil
	}
	return time.Time{}, problem.InvalidArgument(field, "%s must be an RFC 3339 time or a date (YYYY-MM-DD)", field)
}

func (a *API) usage(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	tenant, _ := auth.TenantFrom(ctx)
	q := r.URL.Query()
	from, err := parseTime("from", q.Get("from"))
	if err != nil {
		problem.WriteError(ctx, w, err)
		return
	}
	to, err := parseTime("to", q.Get("to"))
	if err != nil {
		problem.WriteError(ctx, w, err)
		return
	}
	if !from.IsZero() && !to.IsZero() && !to.After(from) {
		problem.WriteError(ctx, w, problem.InvalidArgument("to", "to must be after from"))
		return
	}
	groupBy := q.Get("group_by")
	if groupBy != "" && groupBy != "profile" && groupBy != "day" {
		problem.WriteError(ctx, w, problem.InvalidArgument("group_by", `group_by must be "profile" or "day"`))
		return
	}
	groups, err := a.Usage.Aggregate(ctx, tenant, from, to, groupBy)
	if err != nil {
		problem.WriteError(ctx, w, problem.Unavailable("usage store unavailable", err))
		return
	}
	resp := UsageResponse{Tenant: tenant, GroupBy: groupBy, Groups: groups}
	if !from.IsZero() {
		resp.From = &from
	}
	if !to.IsZero() {
		resp.To = &to
	}
	for _, g := range groups {
		resp.Jobs += g.Jobs
		resp.Quantity += g.Quantity
	}
	WriteJSON(w, http.StatusOK, resp)
}
