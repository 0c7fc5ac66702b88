package restapi

import (
	"encoding/json"
	"fmt"
)

// op is a Swagger 2.0 operation in short.
func op(summary string, params []map[string]any, okCode string, okDesc string) map[string]any {
	return map[string]any{
		"summary":    summary,
		"tags":       []string{"Medius"},
		"parameters": params,
		"responses": map[string]any{
			okCode:    map[string]any{"description": okDesc},
			"default": map[string]any{"description": "RFC 7807 problem (application/problem+json)"},
		},
	}
}

func pathParam(name string) map[string]any {
	return map[string]any{"name": name, "in": "path", "required": true, "type": "string"}
}

func queryParam(name, desc string) map[string]any {
	return map[string]any{"name": name, "in": "query", "required": false, "type": "string", "description": desc}
}

func bodyParam(desc string) map[string]any {
	return map[string]any{"name": "body", "in": "body", "required": true, "description": desc, "schema": map[string]any{"type": "object"}}
}

// Document returns the generated /v1 document with the routes this package
// serves by hand added, so /v1/openapi.json describes all of /v1, titled as
// the API and versioned as the mediator serving it (generated, it is named
// for one of its proto files, "version not set").
func Document(generated []byte, version string) ([]byte, error) {
	var doc map[string]any
	if err := json.Unmarshal(generated, &doc); err != nil {
		return nil, fmt.Errorf("decode openapi document: %w", err)
	}
	if version == "" {
		version = "dev"
	}
	doc["info"] = map[string]any{"title": "Medius API", "version": version,
		"description": "The public API of the Medius mediator: jobs, job profiles, services, tenants, keys and usage. Errors are RFC 7807 problem details."}
	paths, _ := doc["paths"].(map[string]any)
	if paths == nil {
		paths = map[string]any{}
		doc["paths"] = paths
	}
	tenant, client, id := pathParam("tenant"), pathParam("clientId"), pathParam("id")
	paths["/v1/auth/token"] = map[string]any{"post": op("Exchange a client id and secret for an access token (JSON {clientId, clientSecret}, OAuth form or Basic)",
		[]map[string]any{bodyParam("{\"clientId\": ..., \"clientSecret\": ...}")}, "200", "{access_token, token_type, expires_in}")}
	paths["/v1/tenants"] = map[string]any{
		"get":  op("List tenants (admin)", nil, "200", "{tenants: [...]}"),
		"post": op("Create a tenant (admin)", []map[string]any{bodyParam("{id, displayName, quota, locatorRoots: [file:///dir/ or s3://bucket/prefix/, ...]}")}, "201", "the tenant, with its webhook secret"),
	}
	paths["/v1/tenants/{tenant}"] = map[string]any{
		"get":    op("Get a tenant (admin)", []map[string]any{tenant}, "200", "the tenant"),
		"delete": op("Delete a tenant and revoke its keys (admin); its jobs and usage stay, so its id is retired: creating a tenant under it is 409 tenant-id-retired", []map[string]any{tenant}, "204", "deleted"),
	}
	paths["/v1/tenants/{tenant}/quota"] = map[string]any{"put": op("Replace a tenant's quota (admin)",
		[]map[string]any{tenant, bodyParam("{maxConcurrentJobs, maxJobsPerPeriod, maxQuantityPerPeriod, period: day|month}")}, "200", "the tenant")}
	paths["/v1/tenants/{tenant}/locator-roots"] = map[string]any{"put": op("Replace a tenant's locator roots (admin): the URL prefixes "+
		"its jobs' file:// and s3:// locators must lie under (file:///dir/, s3://bucket/ or s3://bucket/prefix/; at most 64 of 2 KiB each and 16 KiB in all, stored normalised); "+
		"an empty list clears them, and a tenant without roots may name no file:// or s3:// locator (403 locator-not-allowed)",
		[]map[string]any{tenant, bodyParam("{roots: [...]}")}, "200", "the tenant")}
	paths["/v1/tenants/{tenant}/webhook-secret:rotate"] = map[string]any{"post": op("Give a tenant a new random webhook secret (admin); "+
		"notifications are signed with it from now on, the old one no longer (receivers switch at once)",
		[]map[string]any{tenant}, "200", "the tenant, with its new webhook secret")}
	paths["/v1/tenants/{tenant}/keys"] = map[string]any{
		"get":  op("List API keys, never their secrets (admin or the tenant)", []map[string]any{tenant}, "200", "{keys: [...]}"),
		"post": op("Create an API key; its secret is shown only in this answer", []map[string]any{tenant}, "201", "{clientId, clientSecret, ...}"),
	}
	paths["/v1/tenants/{tenant}/keys/{clientId}"] = map[string]any{"delete": op("Revoke an API key and its tokens", []map[string]any{tenant, client}, "204", "revoked")}
	paths["/v1/usage"] = map[string]any{"get": op("The caller's usage (verified quantity of completed jobs)",
		[]map[string]any{queryParam("from", "RFC 3339 or YYYY-MM-DD, inclusive"), queryParam("to", "exclusive"), queryParam("group_by", "profile or day")},
		"200", "{tenant, groups: [{key, jobs, quantity}], jobs, quantity}")}
	paths["/v1/jobs/{id}:watch"] = map[string]any{"get": op("Follow a job as Server-Sent Events: event job on every change, event end after a terminal state",
		[]map[string]any{id}, "200", "text/event-stream")}
	return json.Marshal(doc)
}
