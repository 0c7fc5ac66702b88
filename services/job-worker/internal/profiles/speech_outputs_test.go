package profiles

import (
	"encoding/json"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unicode/utf16"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/locator/s3test"
	"github.com/medius-platform/medius/pkg/testmedia"
	"github.com/medius-platform/medius/pkg/workersdk"
)

// putServer records the PUTs it receives, refusing any without a sig
// query parameter, as a signed URL would.
type putServer struct {
	*httptest.Server
	mu   sync.Mutex
	puts map[string][]byte // path?query -> body
}

func newPutServer(t *testing.T) *putServer {
	s := &putServer{puts: map[string][]byte{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPut || r.URL.Query().Get("sig") == "" {
			http.Error(w, "want a signed PUT", http.StatusForbidden)
			return
		}
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.puts[r.URL.RequestURI()] = b
		s.mu.Unlock()
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *putServer) received() map[string][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.puts)
}

// Formats given their own locators are written exactly there, whatever the
// scheme, and the others not at all.
func TestSpeechToTextPerFormatOutputs(t *testing.T) {
	t.Parallel()
	sentences := []string{"the president said on monday that the government would cut taxes"}
	root := t.TempDir()
	speech := testmedia.Speech(t, t.TempDir(), sentences...)
	in := filepath.Join(root, "in", "speech.wav")
	if err := os.MkdirAll(filepath.Dir(in), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(speech, in); err != nil {
		t.Fatal(err)
	}
	srv := s3test.Start(t)
	srv.CreateBucket(t, "media")
	web := newPutServer(t)
	res := &locator.Resolver{Roots: []string{root}, S3: srv.Config(), AllowPrivate: true, TempDir: t.TempDir()}

	want := map[string]string{
		ParamSRTOutput:     web.URL + "/upload/abc.srt?sig=123",
		ParamVTTOutput:     web.URL + "/other/x.vtt?sig=456",
		ParamDraftJSOutput: "s3://media/cortex/job-1/draft.json",
		ParamTextOutput:    "file://" + filepath.Join(root, "out", "words.txt"),
	}
	item := workItem(SpeechToText, "file://"+in, "", nil)
	for name, u := range want {
		item.Input.Locators[name] = &jobsv1.Locator{Url: u}
	}
	out, _, err := run(t, SpeechProfile(res), item)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for name, l := range out.GetLocators() {
		got[name] = l.GetUrl()
	}
	if len(got) != len(want) {
		t.Fatalf("output locators %v, want exactly %v", got, want)
	}
	for name, u := range want {
		if got[name] != u {
			t.Errorf("output %s = %q, want %q", name, got[name], u)
		}
	}
	text := out.GetData().GetFields()[ParamTranscript].GetStringValue()
	t.Logf("heard %q", text)
	if testmedia.WER(strings.Fields(sentences[0]), strings.Fields(text)) > 0.4 {
		t.Errorf("transcript %q too far from %q", text, sentences[0])
	}

	// http: only the two signed URLs, with SRT and WebVTT bodies.
	puts := web.received()
	if len(puts) != 2 {
		t.Errorf("PUTs to %v, want only the SRT and WebVTT URLs", slices.Collect(maps.Keys(puts)))
	}
	srtCues, vttCues := parseCues(t, puts["/upload/abc.srt?sig=123"]), parseCues(t, puts["/other/x.vtt?sig=456"])
	if len(srtCues) == 0 || len(srtCues) != len(vttCues) || !strings.HasPrefix(string(puts["/other/x.vtt?sig=456"]), "WEBVTT\n") {
		t.Errorf("srt %d cues, vtt %d cues:\n%s\n%s", len(srtCues), len(vttCues), puts["/upload/abc.srt?sig=123"], puts["/other/x.vtt?sig=456"])
	}
	if !strings.HasPrefix(string(puts["/upload/abc.srt?sig=123"]), "1\n") {
		t.Errorf("srt does not start with cue 1: %q", puts["/upload/abc.srt?sig=123"])
	}

	// file: the one text file, nothing beside it.
	var files []string
	_ = filepath.WalkDir(filepath.Join(root, "out"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if len(files) != 1 || files[0] != filepath.Join(root, "out", "words.txt") {
		t.Errorf("files written %v, want only words.txt", files)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "out", "words.txt")); strings.TrimSpace(string(b)) != text {
		t.Errorf("text file %q, transcript %q", b, text)
	}

	// s3: the Draft.js object at its key, and nothing else.
	list, err := srv.Client().ListObjectsV2(t.Context(), &s3.ListObjectsV2Input{Bucket: aws.String("media")})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Contents) != 1 || aws.ToString(list.Contents[0].Key) != "cortex/job-1/draft.json" {
		t.Errorf("s3 objects %v, want only cortex/job-1/draft.json", list.Contents)
	}
	checkDraftJS(t, srv.Get(t, "media", "cortex/job-1/draft.json"), text)
}

// checkDraftJS parses a Draft.js raw content state and checks its text is
// the transcript and every word entity covers its word.
func checkDraftJS(t *testing.T, b []byte, text string) {
	t.Helper()
	var raw struct {
		Blocks []struct {
			Key          string `json:"key"`
			Text         string `json:"text"`
			Type         string `json:"type"`
			EntityRanges []struct {
				Offset, Length, Key int
			} `json:"entityRanges"`
			Data struct {
				Start float64 `json:"start"`
				End   float64 `json:"end"`
			} `json:"data"`
		} `json:"blocks"`
		EntityMap map[string]struct {
			Type string `json:"type"`
			Data struct {
				Text  string  `json:"text"`
				Start float64 `json:"start"`
				End   float64 `json:"end"`
			} `json:"data"`
		} `json:"entityMap"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatalf("draftjs: %v: %s", err, b)
	}
	var texts []string
	for _, bl := range raw.Blocks {
		texts = append(texts, bl.Text)
		units := utf16.Encode([]rune(bl.Text))
		if bl.Key == "" || bl.Type != "unstyled" || !(bl.Data.End > bl.Data.Start) {
			t.Errorf("block %+v", bl)
		}
		for _, r := range bl.EntityRanges {
			e, ok := raw.EntityMap[strconv.Itoa(r.Key)]
			if !ok || e.Type != "WORD" || r.Offset+r.Length > len(units) ||
				string(utf16.Decode(units[r.Offset:r.Offset+r.Length])) != e.Data.Text {
				t.Errorf("entity range %+v of %q: entity %+v", r, bl.Text, e)
			}
		}
	}
	if strings.Join(texts, " ") != text || len(raw.EntityMap) != len(strings.Fields(text)) {
		t.Errorf("draftjs text %q with %d words, transcript %q", strings.Join(texts, " "), len(raw.EntityMap), text)
	}
}

// Where to write is checked before any work: none given, a folder that
// cannot take several files, a locator the policy refuses.
func TestSpeechToTextOutputErrors(t *testing.T) {
	root := t.TempDir()
	res := &locator.Resolver{Roots: []string{root}}
	in := "file://" + filepath.Join(root, "never-read.wav")
	for _, c := range []struct {
		name, typ, detail string
		locs              map[string]string
	}{
		{"nowhere", workersdk.TypeInvalidInput, ParamOutputLocation, nil},
		{"http folder for every format", workersdk.TypeInvalidInput, ParamOutputLocation, map[string]string{ParamOutputLocation: "https://example.com/out/"}},
		{"forbidden format locator", workersdk.TypeLocatorForbidden, ParamSRTOutput, map[string]string{ParamSRTOutput: "file:///etc/medius.srt"}},
		{"internal address", workersdk.TypeLocatorForbidden, ParamVTTOutput, map[string]string{ParamVTTOutput: "http://127.0.0.1:1/x.vtt?sig=1"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			item := workItem(SpeechToText, in, "", nil)
			for k, v := range c.locs {
				item.Input.Locators[k] = &jobsv1.Locator{Url: v}
			}
			_, _, err := run(t, SpeechProfile(res), item)
			wantProblem(t, err, c.typ, c.detail)
		})
	}
}

// DetectShots writes its shots as JSON when asked: PUT exactly to a signed
// outputFile URL, or shots.json under an outputLocation folder.
func TestDetectShotsOutputFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	clip := testmedia.Scenes(t, dir)
	web := newPutServer(t)
	res := &locator.Resolver{Roots: []string{dir}, AllowPrivate: true}
	shotsOf := func(b []byte) []any {
		var v struct {
			Shots []any `json:"shots"`
		}
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatalf("shots json: %v: %s", err, b)
		}
		return v.Shots
	}

	signed := web.URL + "/results/e80e5756.json?sig=2"
	item := workItem(DetectShots, "file://"+clip, "", nil)
	item.Input.Locators[ParamOutputFile] = &jobsv1.Locator{Url: signed}
	out, _, err := run(t, ShotsProfile(res), item)
	if err != nil {
		t.Fatal(err)
	}
	if u := out.GetLocators()[ParamOutputFile].GetUrl(); u != signed {
		t.Errorf("outputFile = %q, want the signed URL", u)
	}
	puts := web.received()
	if len(puts) != 1 || len(shotsOf(puts["/results/e80e5756.json?sig=2"])) != 3 {
		t.Errorf("PUTs %v, want the 3 shots at the signed URL", puts)
	}

	folder := filepath.Join(dir, "out")
	out, _, err = run(t, ShotsProfile(res), workItem(DetectShots, "file://"+clip, "file://"+folder, nil))
	if err != nil {
		t.Fatal(err)
	}
	want := "file://" + filepath.Join(folder, "shots.json")
	if u := out.GetLocators()[ParamOutputFile].GetUrl(); u != want {
		t.Errorf("outputFile = %q, want %q", u, want)
	}
	b, err := os.ReadFile(filepath.Join(folder, "shots.json"))
	if err != nil || len(shotsOf(b)) != 3 {
		t.Errorf("shots.json: %v %s", err, b)
	}
}
