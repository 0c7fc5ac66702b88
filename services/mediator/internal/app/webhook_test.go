package app

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	"github.com/medius-platform/medius/services/mediator/internal/webhook"
)

func TestWebhooks(t *testing.T) {
	m := startMediator(t, func(c *Config) {
		c.AdminAPIKey = adminKey
		c.AllowPrivateWebhooks = true // the receiver below is on loopback
		c.WebhookBaseDelay = 20 * time.Millisecond
	})
	var tenant struct{ WebhookSecret string }
	if code, b := m.do("GET", "/v1/tenants/default", adminKey, "", &tenant); code != 200 || tenant.WebhookSecret == "" {
		t.Fatalf("tenant: %d %s", code, b)
	}

	// The receiver fails the first 3 POSTs, then verifies every signature.
	var mu sync.Mutex
	posts, failures := 0, 0
	delivered := map[string]bool{}
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		posts++
		if posts <= 3 {
			failures++
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		if !webhook.Verify(tenant.WebhookSecret, r.Header.Get(webhook.HeaderTimestamp), r.Header.Get(webhook.HeaderSignature), body) {
			t.Errorf("bad signature on %s", body)
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		if r.Header.Get(webhook.HeaderEventID) == "" {
			t.Errorf("no event id")
		}
		var j struct {
			Status   string
			Progress int
		}
		_ = json.Unmarshal(body, &j)
		delivered[j.Status] = true
	}))
	defer recv.Close()

	var job map[string]any
	body := strings.Replace(jobBody, `"profile"`, `"notificationEndpoint":"`+recv.URL+`/hook","profile"`, 1)
	if code, b := m.do("POST", "/v1/jobs", apiKey, body, &job); code != 200 {
		t.Fatalf("create: %d %s", code, b)
	}
	progressJob(t, m, job["id"].(string))
	testsupport.Eventually(t, 30*time.Second, "every status delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return delivered["JOB_STATUS_QUEUED"] && delivered["JOB_STATUS_SCHEDULED"] && delivered["JOB_STATUS_RUNNING"] && delivered["JOB_STATUS_COMPLETED"]
	})
	mu.Lock()
	defer mu.Unlock()
	if failures != 3 {
		t.Fatalf("failures %d, want 3", failures)
	}
}

func TestWebhookEndpointPolicy(t *testing.T) {
	m := startMediator(t, nil) // private endpoints refused by default
	for _, ep := range []string{"http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.1.2.3/hook", "http://[::1]/x", "http://169.254.169.254/latest", "http://[64:ff9b::a9fe:a9fe]/latest", "http://[64:ff9b::a9fe:a9fe%25eth0]/latest", "http://[fd00::1%25eth0]/x", "http://198.18.0.1/hook", "ftp://example.com/x"} {
		body := strings.Replace(jobBody, `"profile"`, `"notificationEndpoint":"`+ep+`","profile"`, 1)
		code, b := m.do("POST", "/v1/jobs", apiKey, body, nil)
		if code != 400 || !strings.Contains(string(b), "job.notification_endpoint") {
			t.Fatalf("endpoint %s: %d %s, want 400 naming job.notification_endpoint", ep, code, b)
		}
	}
	body := strings.Replace(jobBody, `"profile"`, `"notificationEndpoint":"https://hooks.example.com/medius","profile"`, 1)
	if code, b := m.do("POST", "/v1/jobs", apiKey, body, nil); code != 200 {
		t.Fatalf("public endpoint: %d %s", code, b)
	}
}
