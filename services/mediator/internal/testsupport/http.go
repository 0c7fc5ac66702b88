package testsupport

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// Bearer is the header carrying key as bearer credential; none for "".
func Bearer(key string) map[string]string {
	if key == "" {
		return nil
	}
	return map[string]string{"Authorization": "Bearer " + key}
}

// HTTP sends body (JSON, when not empty) to url with the headers hdr and
// returns the response, its body read and closed. A 2xx answer is decoded
// into out when out is not nil.
func HTTP(t testing.TB, method, url string, hdr map[string]string, body string, out any) (*http.Response, []byte) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read the answer: %v", method, url, err)
	}
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: %s: %v", method, url, data, err)
		}
	}
	return resp, data
}
