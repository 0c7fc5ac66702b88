package cortex_test

import (
	"bufio"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/medius-platform/medius/pkg/devstack"
	"github.com/medius-platform/medius/pkg/testmedia"
	"github.com/medius-platform/medius/services/mediator/internal/cortex"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
)

// End-to-end tests of the Cortex front: the four service binaries (as
// `make run` starts them, workers allowed to reach loopback URLs), a real
// pocketsphinx transcribing an espeak-ng sentence, and a local web server
// standing in for the client's storage behind signed URLs.

// every200ms polls cond until it holds, failing t after timeout; gentler
// than testsupport.Eventually on a machine also running four services and
// pocketsphinx.
func every200ms(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// call sends a request and returns the status and body.
func call(t *testing.T, method, url string, hdr map[string]string, body string) (int, []byte) {
	t.Helper()
	resp, b := testsupport.HTTP(t, method, url, hdr, body, nil)
	return resp.StatusCode, b
}

// storage serves the input at a signed GET URL and takes PUTs at signed
// URLs, recording each by its path and query; anything else is refused and
// recorded as stray.
type storage struct {
	*httptest.Server
	input string
	mu    sync.Mutex
	gets  int
	puts  map[string][]byte
	stray []string
}

func newStorage(t *testing.T, input string) *storage {
	s := &storage{input: input, puts: map[string][]byte{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		switch {
		case r.Method == http.MethodGet && r.URL.RequestURI() == "/media/talk.wav?sig=in":
			s.gets++
			http.ServeFile(w, r, s.input)
		case r.Method == http.MethodPut && r.URL.Query().Get("sig") != "":
			b, _ := io.ReadAll(r.Body)
			s.puts[r.URL.RequestURI()] = b
		default:
			s.stray = append(s.stray, r.Method+" "+r.URL.RequestURI())
			http.Error(w, "not signed", http.StatusForbidden)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *storage) put(uri string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.puts[uri]
}

// spoken writes sentence spoken by espeak-ng (testmedia.Speech) and returns
// its path and duration.
func spoken(t *testing.T, dir, sentence string) (string, float64) {
	t.Helper()
	for _, tool := range []string{"espeak-ng", "ffmpeg", "ffprobe", "pocketsphinx_continuous"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: install espeak-ng, ffmpeg and pocketsphinx (make test does this when run as root)", tool)
		}
	}
	out := testmedia.Speech(t, dir, sentence)
	b, err := exec.Command("ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", out).Output()
	if err != nil {
		t.Fatalf("ffprobe: %v", err)
	}
	d, err := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
	if err != nil {
		t.Fatalf("duration %q: %v", b, err)
	}
	return out, d
}

// A Cortex client asks for three of the transcript formats, each at its own
// signed URL; exactly those are PUT there, and the COMPLETED MediatorJob
// names them. A /v1 client does the same with the Medius format names.
func TestCortexSpeechToTextEndToEnd(t *testing.T) {
	t.Parallel()
	const sentence = "the president said on monday that the government would cut taxes"
	audio, duration := spoken(t, t.TempDir(), sentence)
	web := newStorage(t, audio)
	st := devstack.StartForTest(t, devstack.Config{})
	base := "http://" + st.RESTAddr
	spec := loadSpec(t)

	code, b := call(t, "POST", base+"/cortex/auth/access-token", map[string]string{"client": st.ClientID, "secret": st.ClientSecret}, "")
	if code != 201 {
		t.Fatalf("access-token: %d %s", code, b)
	}
	spec.check("post", "/auth/access-token", code, b)
	var tok cortex.Token
	_ = json.Unmarshal(b, &tok)
	authz := map[string]string{"Authorization": tok.Authorization}

	loc := func(key, uri string) string {
		return fmt.Sprintf(`{"awsS3Bucket": "client-bucket", "awsS3Key": %q, "httpEndpoint": %q}`, key, web.URL+uri)
	}
	const srtURI, ttmlURI, draftURI = "/upload/abc.srt?sig=123", "/other/x.ttml?sig=456", "/drafts/d.json?sig=789"
	code, b = call(t, "POST", base+"/cortex/jobs", authz, fmt.Sprintf(`{
	  "projectServiceId": "default", "quantity": 7, "tracking": {"titleId": "e2e-speech"},
	  "job": {"jobType": "AIJob", "jobProfile": "MediaCortexSpeechToText", "jobInput": {
	    "jobInputType": "SpeechToTextInput", "language": "English",
	    "inputFile": %s,
	    "outputLocation": {"srtFormat": %s, "ttmlFormat": %s, "draftjsFormat": %s}}}}`,
		loc("talk.wav", "/media/talk.wav?sig=in"), loc("abc.srt", srtURI), loc("x.ttml", ttmlURI), loc("d.json", draftURI)))
	if code != 201 {
		t.Fatalf("submit: %d %s", code, b)
	}
	spec.check("post", "/jobs", code, b)
	var created cortex.MediatorJob
	_ = json.Unmarshal(b, &created)

	// The same transcript over /v1, asking for WebVTT and text.
	const vttURI, textURI = "/other/x.vtt?sig=456", "/v1out/talk.txt?sig=7"
	key := map[string]string{"Authorization": "Bearer " + st.APIKey}
	code, b = call(t, "POST", base+"/v1/jobs", key, fmt.Sprintf(`{"profile": "SpeechToText", "input": {"locators": {
	  "inputFile": {"url": %q}, "webVttOutputFile": {"url": %q}, "textOutputFile": {"url": %q}}}}`,
		web.URL+"/media/talk.wav?sig=in", web.URL+vttURI, web.URL+textURI))
	if code != 200 {
		t.Fatalf("submit /v1: %d %s", code, b)
	}
	var v1Job struct{ ID string }
	_ = json.Unmarshal(b, &v1Job)

	// Poll as a Cortex client: every answer validates, statuses only move
	// forward, and the job completes.
	order := []string{"NEW", "QUEUED", "SCHEDULED", "RUNNING", "COMPLETED"}
	var seen []string
	var done cortex.MediatorJob
	var doneBody []byte
	start := time.Now()
	every200ms(t, 3*time.Minute, "Cortex job COMPLETED", func() bool {
		code, b := call(t, "GET", base+"/cortex/jobs/"+created.ID, authz, "")
		if code != 200 {
			t.Fatalf("get: %d %s", code, b)
		}
		spec.check("get", "/jobs/{jobId}", code, b)
		done = cortex.MediatorJob{}
		_ = json.Unmarshal(b, &done)
		if s := done.Status.Status; len(seen) == 0 || seen[len(seen)-1] != s {
			if s == "FAILED" || (len(seen) > 0 && slices.Index(order, s) < slices.Index(order, seen[len(seen)-1])) {
				t.Fatalf("after %v: %s", seen, b)
			}
			seen = append(seen, s)
		}
		doneBody = b
		return done.Status.Status == "COMPLETED"
	})
	t.Logf("Cortex job COMPLETED in %s, statuses %v: %s", time.Since(start).Round(time.Millisecond), seen, doneBody)
	if done.Status.Progress != 100 || done.Quantity != int64(math.Ceil(duration)) {
		t.Errorf("progress %d, quantity %d; want 100 and the %.2f s of audio, started seconds", done.Status.Progress, done.Quantity, duration)
	}
	var out struct {
		JobOutput map[string]json.RawMessage `json:"jobOutput"`
	}
	_ = json.Unmarshal(doneBody, &out)
	wantOut := map[string]string{
		"jobOutputType": `"SpeechToTextOutput"`,
		"srtFormat":     `{"awsS3Bucket":"client-bucket","awsS3Key":"abc.srt","httpEndpoint":"` + web.URL + srtURI + `"}`,
		"ttmlFormat":    `{"awsS3Bucket":"client-bucket","awsS3Key":"x.ttml","httpEndpoint":"` + web.URL + ttmlURI + `"}`,
		"draftjsFormat": `{"awsS3Bucket":"client-bucket","awsS3Key":"d.json","httpEndpoint":"` + web.URL + draftURI + `"}`,
	}
	if len(out.JobOutput) != len(wantOut) {
		t.Errorf("jobOutput %s, want exactly %v", doneBody, slices.Sorted(maps.Keys(wantOut)))
	}
	for k, v := range wantOut {
		if string(out.JobOutput[k]) != v {
			t.Errorf("jobOutput.%s = %s, want %s", k, out.JobOutput[k], v)
		}
	}

	// What was PUT parses as its format, and all formats say the same.
	srtCues := parseSRT(t, web.put(srtURI))
	heard := cueTexts(srtCues)
	t.Logf("heard %q", heard)
	if testmedia.WER(strings.Fields(sentence), strings.Fields(heard)) > 0.4 {
		t.Errorf("SRT transcript %q too far from %q", heard, sentence)
	}
	var tt struct {
		Ps []struct {
			Begin string `xml:"begin,attr"`
			End   string `xml:"end,attr"`
			Text  string `xml:",chardata"`
		} `xml:"body>div>p"`
	}
	if err := xml.Unmarshal(web.put(ttmlURI), &tt); err != nil || len(tt.Ps) != len(srtCues) {
		t.Errorf("TTML (%v) has %d cues, SRT %d:\n%s", err, len(tt.Ps), len(srtCues), web.put(ttmlURI))
	}
	for i, p := range tt.Ps {
		if i < len(srtCues) && (p.Text != srtCues[i].text || strings.Replace(srtCues[i].begin, ",", ".", 1) != p.Begin) {
			t.Errorf("TTML cue %d %+v, SRT %+v", i, p, srtCues[i])
		}
	}
	var draft struct {
		Blocks []struct {
			Text string `json:"text"`
		} `json:"blocks"`
		EntityMap map[string]any `json:"entityMap"`
	}
	if err := json.Unmarshal(web.put(draftURI), &draft); err != nil || len(draft.Blocks) != len(srtCues) || len(draft.EntityMap) != len(strings.Fields(heard)) {
		t.Errorf("Draft.js (%v): %s", err, web.put(draftURI))
	}

	// The /v1 job: WebVTT and text at their URLs, listed under their names.
	var v1 map[string]any
	every200ms(t, 3*time.Minute, "/v1 job terminal", func() bool {
		code, b := call(t, "GET", base+"/v1/jobs/"+v1Job.ID, key, "")
		v1 = nil
		_ = json.Unmarshal(b, &v1)
		s, _ := v1["status"].(string)
		return code == 200 && (s == "JOB_STATUS_COMPLETED" || s == "JOB_STATUS_FAILED")
	})
	locs, _ := v1["output"].(map[string]any)["locators"].(map[string]any)
	if v1["status"] != "JOB_STATUS_COMPLETED" || len(locs) != 2 ||
		fmt.Sprint(locs["webVttOutputFile"]) != "map[url:"+web.URL+vttURI+"]" || fmt.Sprint(locs["textOutputFile"]) != "map[url:"+web.URL+textURI+"]" {
		t.Errorf("/v1 job %v", v1)
	}
	vtt := web.put(vttURI)
	if !strings.HasPrefix(string(vtt), "WEBVTT\n\n") || cueTexts(parseCueTimes(t, vtt, ".")) != heard {
		t.Errorf("WebVTT:\n%s\nwant the cues of the SRT", vtt)
	}
	if got := strings.TrimSpace(string(web.put(textURI))); got != heard {
		t.Errorf("text %q, want %q", got, heard)
	}

	// Nothing else was written, and nothing strayed.
	web.mu.Lock()
	defer web.mu.Unlock()
	puts := slices.Sorted(maps.Keys(web.puts))
	if want := []string{draftURI, ttmlURI, vttURI, srtURI, textURI}; !slices.Equal(puts, slices.Sorted(slices.Values(want))) {
		t.Errorf("PUTs %v, want exactly %v", puts, want)
	}
	if len(web.stray) > 0 || web.gets < 2 {
		t.Errorf("stray requests %v; %d GETs of the input", web.stray, web.gets)
	}
}

type subCue struct{ begin, end, text string }

var srtBlock = regexp.MustCompile(`^\d+$`)

// parseSRT reads SRT: a counter from 1, a time line with comma
// milliseconds, the text, a blank line.
func parseSRT(t *testing.T, b []byte) []subCue {
	t.Helper()
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n\n")
	for i, block := range lines {
		if first, _, _ := strings.Cut(block, "\n"); !srtBlock.MatchString(first) || first != strconv.Itoa(i+1) {
			t.Fatalf("SRT block %d does not start with its number:\n%s", i+1, b)
		}
	}
	cues := parseCueTimes(t, b, ",")
	if len(cues) == 0 || len(cues) != len(lines) {
		t.Fatalf("SRT has %d cues in %d blocks:\n%s", len(cues), len(lines), b)
	}
	return cues
}

var cueTime = regexp.MustCompile(`^(\d\d:\d\d:\d\d[.,]\d{3}) --> (\d\d:\d\d:\d\d[.,]\d{3})$`)

// parseCueTimes reads the time lines (with sep before the milliseconds)
// and the text line after each.
func parseCueTimes(t *testing.T, b []byte, sep string) []subCue {
	t.Helper()
	var cues []subCue
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		m := cueTime.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		if !strings.Contains(m[1], sep) || !strings.Contains(m[2], sep) || m[1] >= m[2] {
			t.Fatalf("cue times %q", sc.Text())
		}
		c := subCue{begin: m[1], end: m[2]}
		if sc.Scan() {
			c.text = sc.Text()
		}
		cues = append(cues, c)
	}
	return cues
}

func cueTexts(cues []subCue) string {
	var t []string
	for _, c := range cues {
		t = append(t, c.text)
	}
	return strings.Join(t, " ")
}

func TestTokenExpiryAndRevocationEndToEnd(t *testing.T) {
	t.Parallel()
	// Long enough to tell revocation (auth cache: 10 s) from expiry.
	const ttl = 20 * time.Second
	st := devstack.StartForTest(t, devstack.Config{Args: map[string][]string{"mediator": {"--token-ttl", ttl.String()}}})
	base := "http://" + st.RESTAddr
	spec := loadSpec(t)
	admin := map[string]string{"Authorization": "Bearer " + st.AdminKey}

	v1Token := func(id, secret string) (int, string) {
		code, b := call(t, "POST", base+"/v1/auth/token", nil, fmt.Sprintf(`{"clientId":%q,"clientSecret":%q}`, id, secret))
		var tok struct {
			AccessToken string `json:"access_token"`
			ExpiresIn   int64  `json:"expires_in"`
		}
		if code == 200 && (json.Unmarshal(b, &tok) != nil || tok.ExpiresIn != int64(ttl.Seconds())) {
			t.Fatalf("/v1 token %s, want expires_in %v", b, ttl.Seconds())
		}
		return code, tok.AccessToken
	}
	cortexToken := func(id, secret string) (int, string) {
		code, b := call(t, "POST", base+"/cortex/auth/access-token", map[string]string{"client": id, "secret": secret}, "")
		spec.check("post", "/auth/access-token", code, b)
		var tok cortex.Token
		if code == 201 && (json.Unmarshal(b, &tok) != nil || tok.Expires != int64(ttl.Seconds())) {
			t.Fatalf("Cortex token %s, want expires %v", b, ttl.Seconds())
		}
		return code, tok.Authorization
	}
	var key struct{ ClientID, ClientSecret string }
	code, b := call(t, "POST", base+"/v1/tenants/default/keys", admin, `{"name":"to-revoke"}`)
	if code != 201 || json.Unmarshal(b, &key) != nil || key.ClientSecret == "" {
		t.Fatalf("create key: %d %s", code, b)
	}
	_, v1Tok := v1Token(st.ClientID, st.ClientSecret)
	_, cxTok := cortexToken(st.ClientID, st.ClientSecret)
	_, v1Revoked := v1Token(key.ClientID, key.ClientSecret)
	_, cxRevoked := cortexToken(key.ClientID, key.ClientSecret)
	issued := time.Now()

	// A token is accepted by: /v1 listing the tenant's jobs (200), /cortex
	// looking up a job that does not exist (404, after authentication) and
	// refusing a submission without quantity (400, after authentication:
	// probing with it creates no job).
	v1Code := func(tok string) (int, []byte) {
		return call(t, "GET", base+"/v1/jobs", map[string]string{"Authorization": "Bearer " + tok}, "")
	}
	cxCode := func(bearer string) (int, []byte) {
		return call(t, "GET", base+"/cortex/jobs/no-such-job", map[string]string{"Authorization": bearer}, "")
	}
	cxSubmit := func(bearer string) (int, []byte) {
		return call(t, "POST", base+"/cortex/jobs", map[string]string{"Authorization": bearer}, `{"projectServiceId": "default"}`)
	}
	accepted := func(what string) {
		t.Helper()
		if c, b := v1Code(v1Tok); c != 200 {
			t.Fatalf("%s: /v1 with a live token: %d %s", what, c, b)
		}
		if c, b := cxCode(cxTok); c != 404 {
			t.Fatalf("%s: /cortex with a live token: %d %s", what, c, b)
		}
		if c, b := cxSubmit(cxTok); c != 400 || !strings.Contains(string(b), `"field":"quantity"`) {
			t.Fatalf("%s: /cortex submission without quantity: %d %s", what, c, b)
		}
	}
	accepted("fresh tokens")
	if c, _ := v1Code(v1Revoked); c != 200 {
		t.Fatalf("the key's /v1 token before revocation: %d", c)
	}
	if c, _ := cxCode(cxRevoked); c != 404 {
		t.Fatalf("the key's Cortex token before revocation: %d", c)
	}

	// Revoke: the key's tokens stop working on both fronts.
	if code, b := call(t, "DELETE", base+"/v1/tenants/default/keys/"+key.ClientID, admin, ""); code != 204 {
		t.Fatalf("revoke: %d %s", code, b)
	}
	every200ms(t, 15*time.Second, "revoked key's tokens refused", func() bool {
		c1, _ := v1Code(v1Revoked)
		c2, b := cxSubmit(cxRevoked)
		spec.check("post", "/jobs", c2, b)
		return c1 == 401 && c2 == 401
	})
	if time.Since(issued) >= ttl {
		t.Fatalf("revocation took %s, longer than the token lifetime: it cannot be told from expiry", time.Since(issued))
	}
	accepted("after revoking another key")
	if c, _ := cortexToken(key.ClientID, key.ClientSecret); c != 401 {
		t.Errorf("Cortex token exchange with a revoked key: %d, want 401", c)
	}
	if c, _ := v1Token(key.ClientID, key.ClientSecret); c != 401 {
		t.Errorf("/v1 token exchange with a revoked key: %d, want 401", c)
	}
	t.Logf("revoked key's tokens refused %s after issue", time.Since(issued).Round(time.Millisecond))

	// Expiry: the live tokens are refused once their lifetime has passed,
	// saying so, and not before.
	var v1Body, cxBody []byte
	every200ms(t, ttl+20*time.Second, "expired tokens refused", func() bool {
		var c1, c2 int
		c1, v1Body = v1Code(v1Tok)
		c2, cxBody = cxSubmit(cxTok)
		if (c1 == 401 || c2 == 401) && time.Since(issued) < ttl {
			t.Fatalf("token refused %s after issue, before its %s lifetime: %d %s / %d %s", time.Since(issued), ttl, c1, v1Body, c2, cxBody)
		}
		if c2 != 401 && c2 != 400 {
			t.Fatalf("Cortex submit without quantity: %d %s", c2, cxBody)
		}
		return c1 == 401 && c2 == 401
	})
	t.Logf("tokens refused %s after issue: /v1 %s /cortex %s", time.Since(issued).Round(time.Millisecond), v1Body, cxBody)
	spec.check("post", "/jobs", 401, cxBody)
	for _, b := range [][]byte{v1Body, cxBody} {
		var p map[string]any
		if json.Unmarshal(b, &p) != nil || p["status"] != float64(401) || !strings.Contains(fmt.Sprint(p["detail"]), "token expired") {
			t.Errorf("expired token answer %s, want a 401 problem saying the token expired", b)
		}
	}
	if c, b := cxCode(cxTok); c != 401 {
		t.Errorf("GET /cortex/jobs with the expired token: %d %s", c, b)
	}
}
