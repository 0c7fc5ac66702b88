package profiles

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/workersdk"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Names of the speech-to-text profile, its outputs and the engine's files.
const (
	SpeechToText = "SpeechToText"
	// Output locators, as in the Cortex SpeechToTextOutput.
	ParamJSONOutput = "jsonOutputFile"
	ParamTTMLOutput = "ttmlOutputFile"
	ParamSRTOutput  = "srtOutputFile"
	ParamVTTOutput  = "webVttOutputFile"
	ParamTextOutput = "textOutputFile"
	ParamTranscript = "transcript"
	maxCueWords     = 10
	maxCueSeconds   = 6.0
)

// Pocketsphinx is the recogniser run, and PocketsphinxModel the directory
// of the Debian en-us model (pocketsphinx-en-us).
var (
	Pocketsphinx      = "pocketsphinx_continuous"
	PocketsphinxModel = "/usr/share/pocketsphinx/model/en-us"
)

// SpeechProfile transcribes the first audio stream with pocketsphinx and
// writes the transcript as JSON (word timings), EBU-TT/TTML, SRT, WebVTT and
// plain text to the output location.
func SpeechProfile(res *locator.Resolver) workersdk.Profile {
	return workersdk.Profile{
		Spec: &registryv1.JobProfile{
			Name: SpeechToText, JobType: "AIJob",
			Description:     "English speech to text with word timings, as JSON, TTML, SRT, WebVTT and text (pocketsphinx, en-us model).",
			InputParameters: []*registryv1.ParameterSpec{{Name: ParamInputFile, Type: "locator"}, {Name: ParamOutputLocation, Type: "locator"}},
			OutputParameters: []*registryv1.ParameterSpec{{Name: ParamJSONOutput, Type: "locator"}, {Name: ParamTTMLOutput, Type: "locator"},
				{Name: ParamSRTOutput, Type: "locator"}, {Name: ParamVTTOutput, Type: "locator"}, {Name: ParamTextOutput, Type: "locator"},
				{Name: ParamTranscript, Type: "string"}},
			DefaultTimeout: durationpb.New(4 * time.Hour),
			MaxAttempts:    3,
		},
		Handler: func(ctx context.Context, item *workersdk.WorkItem, progress func(int)) (*jobsv1.JobOutput, float64, error) {
			outs, err := newOutputs(res, item)
			if err != nil {
				return nil, 0, err
			}
			m, cleanup, err := openMedia(ctx, res, item, false, true)
			defer cleanup()
			if err != nil {
				return nil, 0, err
			}
			dir, rm, err := workDir()
			defer rm()
			if err != nil {
				return nil, 0, err
			}
			// The model is 16 kHz mono.
			wav := filepath.Join(dir, "speech.wav")
			if _, err := runFFmpeg(ctx, m.duration, func(p int) { progress(p / 5) }, "-i", m.path, "-map", "0:a:0", "-vn",
				"-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", wav); err != nil {
				return nil, 0, err
			}
			words, err := recognise(ctx, wav)
			if err != nil {
				return nil, 0, err
			}
			progress(90)
			cues := toCues(words)
			files := map[string]string{
				ParamJSONOutput: "transcript.json", ParamTTMLOutput: "transcript.ttml", ParamSRTOutput: "transcript.srt",
				ParamVTTOutput: "transcript.vtt", ParamTextOutput: "transcript.txt",
			}
			text := transcriptText(cues)
			contents := map[string][]byte{
				ParamJSONOutput: transcriptJSON(words, cues, text), ParamTTMLOutput: ttml(cues), ParamSRTOutput: srt(cues),
				ParamVTTOutput: webVTT(cues), ParamTextOutput: []byte(text + "\n"),
			}
			locs := map[string]*jobsv1.Locator{}
			for param, name := range files {
				p := filepath.Join(dir, name)
				if err := os.WriteFile(p, contents[param], 0o600); err != nil {
					return nil, 0, fmt.Errorf("write %s: %w", name, err)
				}
				loc, err := outs.put(ctx, p, name, false)
				if err != nil {
					return nil, 0, err
				}
				locs[param] = loc
			}
			return &jobsv1.JobOutput{Locators: locs, Data: &structpb.Struct{Fields: map[string]*structpb.Value{
				ParamTranscript: structpb.NewStringValue(text),
			}}}, m.duration, nil
		},
	}
}

type word struct {
	Word       string  `json:"word"`
	Start      float64 `json:"start"`
	End        float64 `json:"end"`
	Confidence float64 `json:"confidence"`
	utterance  int
}

type cue struct {
	Start float64 `json:"start"`
	End   float64 `json:"end"`
	Text  string  `json:"text"`
}

// recognise runs pocketsphinx with word times on a 16 kHz mono wav.
func recognise(ctx context.Context, wav string) ([]word, error) {
	ctx, end := toolSpan(ctx, Pocketsphinx)
	cmd := exec.CommandContext(ctx, Pocketsphinx, "-infile", wav, "-time", "yes",
		"-hmm", filepath.Join(PocketsphinxModel, "en-us"), "-lm", filepath.Join(PocketsphinxModel, "en-us.lm.bin"),
		"-dict", filepath.Join(PocketsphinxModel, "cmudict-en-us.dict"), "-logfn", os.DevNull)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	end(err)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("pocketsphinx: %w", context.Cause(ctx))
		}
		return nil, workersdk.ToolError("pocketsphinx", err, stderr.Bytes())
	}
	return parseSphinx(stdout.Bytes()), nil
}

// parseSphinx reads "word start end confidence" lines (the hypothesis lines
// in between have no times), dropping silences, fillers and sentence marks
// and the "(2)" of alternate pronunciations. <s> starts an utterance.
func parseSphinx(out []byte) []word {
	var words []word
	utt := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 4 {
			continue
		}
		start, e1 := strconv.ParseFloat(f[1], 64)
		end, e2 := strconv.ParseFloat(f[2], 64)
		conf, e3 := strconv.ParseFloat(f[3], 64)
		if e1 != nil || e2 != nil || e3 != nil {
			continue
		}
		w := f[0]
		switch {
		case w == "<s>":
			utt++
			continue
		case w == "</s>" || w == "<sil>" || strings.HasPrefix(w, "["), strings.HasPrefix(w, "++"):
			continue
		}
		if i := strings.IndexByte(w, '('); i > 0 {
			w = w[:i]
		}
		words = append(words, word{Word: w, Start: round3(start), End: round3(end), Confidence: round3(conf), utterance: utt})
	}
	return words
}

// toCues groups words into subtitle cues: a new cue per utterance, and
// when a cue would exceed maxCueWords or maxCueSeconds.
func toCues(words []word) []cue {
	var cues []cue
	var cur []string
	var c cue
	lastUtt := -1
	for _, w := range words {
		if len(cur) > 0 && (w.utterance != lastUtt || len(cur) == maxCueWords || w.End-c.Start > maxCueSeconds) {
			c.Text = strings.Join(cur, " ")
			cues = append(cues, c)
			cur = nil
		}
		if len(cur) == 0 {
			c = cue{Start: w.Start}
		}
		cur = append(cur, w.Word)
		c.End = w.End
		lastUtt = w.utterance
	}
	if len(cur) > 0 {
		c.Text = strings.Join(cur, " ")
		cues = append(cues, c)
	}
	return cues
}

func transcriptText(cues []cue) string {
	t := make([]string, len(cues))
	for i, c := range cues {
		t[i] = c.Text
	}
	return strings.Join(t, " ")
}

func transcriptJSON(words []word, cues []cue, text string) []byte {
	if words == nil {
		words = []word{}
	}
	if cues == nil {
		cues = []cue{}
	}
	b, _ := json.MarshalIndent(map[string]any{"text": text, "words": words, "cues": cues}, "", "  ")
	return b
}

// clock formats seconds as HH:MM:SS<sep>mmm.
func clock(s float64, sep string) string {
	tc := timecode(s)
	return tc[:8] + sep + tc[9:]
}

func srt(cues []cue) []byte {
	var b bytes.Buffer
	for i, c := range cues {
		fmt.Fprintf(&b, "%d\n%s --> %s\n%s\n\n", i+1, clock(c.Start, ","), clock(c.End, ","), c.Text)
	}
	return b.Bytes()
}

func webVTT(cues []cue) []byte {
	var b bytes.Buffer
	b.WriteString("WEBVTT\n\n")
	for _, c := range cues {
		fmt.Fprintf(&b, "%s --> %s\n%s\n\n", clock(c.Start, "."), clock(c.End, "."), c.Text)
	}
	return b.Bytes()
}

// ttml writes EBU-TT-D style TTML: media time base, one p per cue.
func ttml(cues []cue) []byte {
	var b bytes.Buffer
	b.WriteString(xml.Header)
	b.WriteString(`<tt xmlns="http://www.w3.org/ns/ttml" xmlns:ttp="http://www.w3.org/ns/ttml#parameter" ttp:timeBase="media" xml:lang="en">` + "\n")
	b.WriteString("  <body>\n    <div>\n")
	for i, c := range cues {
		fmt.Fprintf(&b, `      <p xml:id="sub%d" begin="%s" end="%s">`, i+1, clock(c.Start, "."), clock(c.End, "."))
		_ = xml.EscapeText(&b, []byte(c.Text))
		b.WriteString("</p>\n")
	}
	b.WriteString("    </div>\n  </body>\n</tt>\n")
	return b.Bytes()
}
