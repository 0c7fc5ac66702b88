package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/medius-platform/medius/cmd/medius/internal/cli"
)

// TestRegistryThroughTheMediator drives the registry as a user of a
// self-hosted platform does, through the mediator only: the CLI (gRPC), the
// /v1 REST routes and the MCMA resources, with a tenant's key (read) and the
// admin key (write), against the real four binaries.
func TestRegistryThroughTheMediator(t *testing.T) {
	p := setup(t)
	run := func(key string, args ...string) (string, error) {
		var out bytes.Buffer
		cmd := cli.New()
		cmd.SetArgs(append(args, "--server", p.stack.GRPCAddr, "--api-key", key))
		cmd.SetOut(&out)
		cmd.SetErr(io.Discard)
		err := cmd.ExecuteContext(context.Background())
		return out.String(), err
	}

	// The worker registered itself and its built-in profiles.
	var instances []map[string]any
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := run(apiKey, "instances", "list", "-o", "json")
		if err == nil && json.Unmarshal([]byte(out), &instances) == nil && len(instances) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("instances list: %v\n%s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if instances[0]["service"] == "" || instances[0]["capacity"] == nil {
		t.Errorf("instance JSON lacks fields: %v", instances[0])
	}
	// A tenant's table has no address; an operator holding only the admin
	// key (MEDIUS_ADMIN_API_KEY, no --api-key) sees where workers run.
	if out, err := run(apiKey, "instances", "list"); err != nil || strings.Contains(out, "ADDRESS") {
		t.Errorf("tenant's instances table: %v\n%s", err, out)
	}
	t.Setenv("MEDIUS_API_KEY", "")
	t.Setenv("MEDIUS_ADMIN_API_KEY", p.stack.AdminKey)
	var adminOut bytes.Buffer
	cmd := cli.New()
	cmd.SetArgs([]string{"instances", "list", "--server", p.stack.GRPCAddr})
	cmd.SetOut(&adminOut)
	cmd.SetErr(io.Discard)
	if err := cmd.ExecuteContext(context.Background()); err != nil || !strings.Contains(adminOut.String(), "ADDRESS") {
		t.Errorf("admin's instances table: %v\n%s", err, adminOut.String())
	}
	out, err := run(apiKey, "services", "list")
	if err != nil || !strings.Contains(out, "NAME") || !strings.Contains(out, "ExtractTechnicalMetadata") {
		t.Errorf("services list table: %v\n%s", err, out)
	}
	out, err = run(apiKey, "profiles", "get", "ExtractTechnicalMetadata")
	if err != nil || !strings.Contains(out, "inputFile (locator)") {
		t.Errorf("profiles get: %v\n%s", err, out)
	}

	// Apply a profile from YAML: refused to a tenant, done by the admin.
	file := filepath.Join(t.TempDir(), "thumb.yaml")
	yaml := "name: ExtractThumbnail\njobType: TransformJob\ndescription: first frame\ninputParameters:\n  - {name: inputFile, type: locator}\noptionalInputParameters:\n  - {name: width, type: integer}\ndefaultTimeout: 300s\nmaxAttempts: 3\n"
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := run(apiKey, "profiles", "apply", "-f", file); err == nil || !strings.Contains(cli.Describe(err), "admin") {
		t.Errorf("tenant apply: %v, want permission denied", err)
	}
	admin := p.stack.AdminKey
	if out, err := run(admin, "profiles", "apply", "-f", file); err != nil || !strings.Contains(out, "applied") {
		t.Fatalf("admin apply: %v\n%s", err, out)
	}
	out, err = run(apiKey, "profiles", "list", "--job-type", "TransformJob", "-o", "json")
	var profiles []map[string]any
	if err != nil || json.Unmarshal([]byte(out), &profiles) != nil || !hasName(profiles, "ExtractThumbnail") {
		t.Errorf("profiles list --job-type TransformJob: %v\n%s", err, out)
	}
	if err := os.WriteFile(file, []byte("name: Bad\njobType: AIJob\ninputParameters:\n  - {name: x, type: text}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := run(admin, "profiles", "apply", "-f", file); err == nil || !strings.Contains(cli.Describe(err), "(field profile.input_parameters[0].type)") {
		t.Errorf("invalid profile: %v", err)
	}

	// A job whose input has the wrong type is refused naming the parameter.
	code, body := p.rest(t, "POST", "/v1/jobs", apiKey, `{"profile":"ExtractThumbnail","input":{"locators":{"inputFile":{"url":"file:///x.mp4"}},"parameters":{"width":"wide"}}}`)
	if code != http.StatusBadRequest || !strings.Contains(string(body), `"field":"job.input.width"`) {
		t.Errorf("wrongly typed input: %d %s", code, body)
	}

	// The same registry as REST (/v1) and as MCMA resources.
	code, body = p.rest(t, "GET", "/v1/profiles/ExtractThumbnail", apiKey, "")
	if code != http.StatusOK || !strings.Contains(string(body), `"maxAttempts":3`) {
		t.Errorf("GET /v1/profiles/ExtractThumbnail: %d %s", code, body)
	}
	req, _ := http.NewRequest("GET", "http://"+p.stack.RESTAddr+"/mcma/job-profiles?jobType=TransformJob", nil)
	req.Header.Set("x-mcma-api-key", apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var page struct {
		Results []map[string]any `json:"results"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &page) != nil || !hasName(page.Results, "ExtractThumbnail") {
		t.Fatalf("MCMA job-profiles: %d %s", resp.StatusCode, b)
	}
	for _, r := range page.Results {
		if r["name"] == "ExtractThumbnail" && (r["@type"] != "JobProfile" || r["id"] != "http://"+p.stack.RESTAddr+"/mcma/job-profiles/ExtractThumbnail") {
			t.Errorf("MCMA document: %v", r)
		}
	}

	if out, err := run(admin, "profiles", "delete", "ExtractThumbnail"); err != nil || !strings.Contains(out, "deleted") {
		t.Errorf("delete: %v %s", err, out)
	}
	if _, err := run(apiKey, "profiles", "get", "ExtractThumbnail"); err == nil || !strings.Contains(cli.Describe(err), "Not found") {
		t.Errorf("get deleted: %v", err)
	}
}

func hasName(items []map[string]any, name string) bool {
	for _, it := range items {
		if it["name"] == name {
			return true
		}
	}
	return false
}
