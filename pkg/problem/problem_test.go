package problem

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestDomainErrorRoundTrip(t *testing.T) {
	wrapped := fmt.Errorf("create job j1: %w", InvalidArgument("job.profile", `unknown profile "X"`))
	st, ok := status.FromError(ToStatus(context.Background(), wrapped))
	if !ok || st.Code() != codes.InvalidArgument {
		t.Fatalf("status %v, want InvalidArgument", st)
	}
	p := FromStatus(st)
	if p.Field != "job.profile" || p.Detail != `unknown profile "X"` || p.Status != 400 || p.Type != TypePrefix+"invalid-argument" {
		t.Errorf("problem = %+v", p)
	}
}

func TestToStatus(t *testing.T) {
	cases := []struct {
		err  error
		want codes.Code
		msg  string
	}{
		{NotFound("job", "j1"), codes.NotFound, `job "j1" not found`},
		{Unauthenticated("invalid API key"), codes.Unauthenticated, "invalid API key"},
		{FailedPrecondition("job-terminal", "job j1 is COMPLETED"), codes.FailedPrecondition, "job j1 is COMPLETED"},
		{fmt.Errorf("get: %w", context.DeadlineExceeded), codes.DeadlineExceeded, ""},
		{context.Canceled, codes.Canceled, ""},
		{status.Error(codes.Aborted, "conflict"), codes.Aborted, "conflict"},
		// Unknown errors never leak their text.
		{errors.New("dial tcp 10.0.0.1: secret detail"), codes.Internal, "internal error"},
	}
	for _, c := range cases {
		st, _ := status.FromError(ToStatus(context.Background(), c.err))
		if st.Code() != c.want || (c.msg != "" && st.Message() != c.msg) {
			t.Errorf("ToStatus(%v) = %v %q, want %v %q", c.err, st.Code(), st.Message(), c.want, c.msg)
		}
	}
	if ToStatus(context.Background(), nil) != nil {
		t.Error("ToStatus(nil) != nil")
	}
}

func TestHTTPStatus(t *testing.T) {
	for code, want := range map[codes.Code]int{
		codes.InvalidArgument: 400, codes.Unauthenticated: 401, codes.PermissionDenied: 403, codes.NotFound: 404,
		codes.FailedPrecondition: 409, codes.AlreadyExists: 409, codes.ResourceExhausted: 429, codes.Unavailable: 503,
	} {
		if got := HTTPStatus(code); got != want {
			t.Errorf("HTTPStatus(%s) = %d, want %d", code, got, want)
		}
	}
}

func TestWriteErrorIsProblemJSON(t *testing.T) {
	rec := httptest.NewRecorder()
	WriteError(context.Background(), rec, NotFound("job", "j9"))
	if rec.Code != http.StatusNotFound || rec.Header().Get("Content-Type") != ContentType {
		t.Fatalf("got %d %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if body["type"] != TypePrefix+"job-not-found" || body["status"] != 404.0 || body["title"] == "" || body["detail"] != `job "j9" not found` {
		t.Errorf("body = %v", body)
	}
}
