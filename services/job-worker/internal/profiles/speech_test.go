package profiles

import (
	"bufio"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"math"
	"os"
	"strings"
	"testing"

	"github.com/medius-platform/medius/pkg/testmedia"
)

// parseCues reads SRT or WebVTT cue times and texts.
func parseCues(t *testing.T, data []byte) []cue {
	t.Helper()
	var cues []cue
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		l := sc.Text()
		a, b, ok := strings.Cut(l, " --> ")
		if !ok {
			continue
		}
		c := cue{Start: parseClock(t, a), End: parseClock(t, b)}
		if sc.Scan() {
			c.Text = sc.Text()
		}
		cues = append(cues, c)
	}
	return cues
}

func parseClock(t *testing.T, s string) float64 {
	t.Helper()
	var h, m, sec, ms int
	s = strings.Replace(strings.TrimSpace(s), ",", ".", 1)
	if _, err := fmtSscanf(s, &h, &m, &sec, &ms); err != nil {
		t.Fatalf("bad clock %q: %v", s, err)
	}
	return float64(h*3600+m*60+sec) + float64(ms)/1000
}

func TestSpeechToText(t *testing.T) {
	t.Parallel() // the tools are separate processes: overlap their start-up and I/O
	sentences := []string{"the president said on monday that the government would cut taxes"}
	dir := t.TempDir()
	speech := testmedia.Speech(t, dir, sentences...)
	ref := strings.Fields(strings.Join(sentences, " "))
	_, duration, err := Probe(t.Context(), speech)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stores(t) {
		t.Run(s.name, func(t *testing.T) {
			out, qty, err := run(t, SpeechProfile(s.res), workItem(SpeechToText, s.input(t, speech, "speech.wav"), s.outputLocation(t), nil))
			if err != nil {
				t.Fatal(err)
			}
			locs := out.GetLocators()
			read := func(param string) []byte {
				b, err := os.ReadFile(s.fetch(t, locs[param].GetUrl()))
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
			var js struct {
				Text  string `json:"text"`
				Words []word `json:"words"`
				Cues  []cue  `json:"cues"`
			}
			if err := json.Unmarshal(read(ParamJSONOutput), &js); err != nil {
				t.Fatalf("json output: %v", err)
			}
			hyp := strings.Fields(strings.TrimSpace(string(read(ParamTextOutput))))
			w := testmedia.WER(ref, hyp)
			t.Logf("WER %.1f%%: %q", 100*w, strings.Join(hyp, " "))
			if w > 0.4 {
				t.Errorf("word error rate %.0f%% > 40%%: heard %q", 100*w, hyp)
			}
			if js.Text != strings.Join(hyp, " ") || len(js.Words) != len(hyp) {
				t.Errorf("json text %q (%d words) disagrees with the text output %q", js.Text, len(js.Words), hyp)
			}
			if len(js.Cues) == 0 {
				t.Fatalf("no cues")
			}
			checkDraftJS(t, read(ParamDraftJSOutput), js.Text)
			if math.Abs(js.Cues[0].Start-0.5) > 0.4 {
				t.Errorf("first cue starts at %v, speech starts at 0.5", js.Cues[0].Start)
			}
			var tt struct {
				Ps []struct {
					Begin string `xml:"begin,attr"`
					End   string `xml:"end,attr"`
					Text  string `xml:",chardata"`
				} `xml:"body>div>p"`
			}
			if err := xml.Unmarshal(read(ParamTTMLOutput), &tt); err != nil {
				t.Fatalf("ttml output: %v", err)
			}
			srtCues, vttCues := parseCues(t, read(ParamSRTOutput)), parseCues(t, read(ParamVTTOutput))
			if !strings.HasPrefix(string(read(ParamVTTOutput)), "WEBVTT") {
				t.Error("WebVTT output lacks its header")
			}
			if len(tt.Ps) != len(js.Cues) || len(srtCues) != len(js.Cues) || len(vttCues) != len(js.Cues) {
				t.Fatalf("cue counts: json %d, ttml %d, srt %d, vtt %d", len(js.Cues), len(tt.Ps), len(srtCues), len(vttCues))
			}
			for i, c := range js.Cues {
				ttc := cue{Start: parseClock(t, tt.Ps[i].Begin), End: parseClock(t, tt.Ps[i].End), Text: tt.Ps[i].Text}
				for name, o := range map[string]cue{"ttml": ttc, "srt": srtCues[i], "vtt": vttCues[i]} {
					if math.Abs(o.Start-c.Start) > 0.001 || math.Abs(o.End-c.End) > 0.001 || o.Text != c.Text {
						t.Errorf("%s cue %d = %+v, json has %+v", name, i, o, c)
					}
				}
			}
			if math.Abs(qty-duration) > 0.01 {
				t.Errorf("verified quantity = %v, want the audio duration %v", qty, duration)
			}
		})
	}
}

func fmtSscanf(s string, h, m, sec, ms *int) (int, error) {
	return fmt.Sscanf(s, "%d:%d:%d.%d", h, m, sec, ms)
}

func TestCues(t *testing.T) {
	words := parseSphinx([]byte("hello world\n<s> 0.000 0.500 1.0\nhello 0.510 0.900 0.9\n<sil> 0.9 1.0 1\nworld(2) 1.000 1.400 0.8\n</s> 1.4 1.5 1\n<s> 2.0 2.1 1\n[NOISE] 2.1 2.2 1\nagain 2.200 2.600 0.7\n"))
	cues := toCues(words)
	if len(words) != 3 || words[1].Word != "world" || len(cues) != 2 || cues[0] != (cue{0.51, 1.4, "hello world"}) || cues[1] != (cue{2.2, 2.6, "again"}) {
		t.Fatalf("words %+v cues %+v", words, cues)
	}
	if got := string(srt(cues)); got != "1\n00:00:00,510 --> 00:00:01,400\nhello world\n\n2\n00:00:02,200 --> 00:00:02,600\nagain\n\n" {
		t.Errorf("srt = %q", got)
	}
	if got := string(ttml([]cue{{1, 2, "a < b & c"}})); !strings.Contains(got, `begin="00:00:01.000" end="00:00:02.000">a &lt; b &amp; c</p>`) {
		t.Errorf("ttml = %s", got)
	}
}
