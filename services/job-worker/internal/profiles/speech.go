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
	"unicode/utf16"

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
	// Output locators, one per format (the Cortex front maps its
	// SpeechToTextOutput jsonFormat, ttmlFormat... to them). Given as input
	// locators, they name where each requested format is written.
	ParamJSONOutput    = "jsonOutputFile"
	ParamTTMLOutput    = "ttmlOutputFile"
	ParamSRTOutput     = "srtOutputFile"
	ParamVTTOutput     = "webVttOutputFile"
	ParamTextOutput    = "textOutputFile"
	ParamDraftJSOutput = "draftjsOutputFile"
	ParamTranscript    = "transcript"
	maxCueWords        = 10
	maxCueSeconds      = 6.0
)

// transcriptFormat is one file SpeechToText writes: its output locator, its
// name under an outputLocation folder, and its contents.
type transcriptFormat struct {
	param, file string
	render      func(t *transcript) []byte
}

// transcript is what the recogniser heard.
type transcript struct {
	words []word
	cues  []cue
	text  string
}

var transcriptFormats = []transcriptFormat{
	{ParamJSONOutput, "transcript.json", func(t *transcript) []byte { return transcriptJSON(t.words, t.cues, t.text) }},
	{ParamTTMLOutput, "transcript.ttml", func(t *transcript) []byte { return ttml(t.cues) }},
	{ParamSRTOutput, "transcript.srt", func(t *transcript) []byte { return srt(t.cues) }},
	{ParamVTTOutput, "transcript.vtt", func(t *transcript) []byte { return webVTT(t.cues) }},
	{ParamTextOutput, "transcript.txt", func(t *transcript) []byte { return []byte(t.text + "\n") }},
	{ParamDraftJSOutput, "transcript.draftjs.json", func(t *transcript) []byte { return draftJS(t.words) }},
}

// formatSpecs declares the format locators.
func formatSpecs() []*registryv1.ParameterSpec {
	specs := make([]*registryv1.ParameterSpec, len(transcriptFormats))
	for i, f := range transcriptFormats {
		specs[i] = &registryv1.ParameterSpec{Name: f.param, Type: "locator"}
	}
	return specs
}

func transcriptParams() []string {
	names := make([]string, len(transcriptFormats))
	for i, f := range transcriptFormats {
		names[i] = f.param
	}
	return names
}

// Pocketsphinx is the recogniser run, and PocketsphinxModel the directory
// of the Debian en-us model (pocketsphinx-en-us).
var (
	Pocketsphinx      = "pocketsphinx_continuous"
	PocketsphinxModel = "/usr/share/pocketsphinx/model/en-us"
)

// SpeechProfile transcribes the first audio stream with pocketsphinx and
// writes the transcript as JSON (word timings), EBU-TT/TTML, SRT, WebVTT,
// plain text and Draft.js: each format given its own output locator
// (jsonOutputFile...) is written exactly there, and only those; with an
// outputLocation folder instead, every format is written under it.
func SpeechProfile(res *locator.Resolver) workersdk.Profile {
	return workersdk.Profile{
		Spec: &registryv1.JobProfile{
			Name: SpeechToText, JobType: "AIJob",
			Description: "English speech to text with word timings, as JSON, TTML, SRT, WebVTT, text and Draft.js (pocketsphinx, en-us model). " +
				"Give each format wanted as an input locator named like its output (jsonOutputFile, ttmlOutputFile, srtOutputFile, webVttOutputFile, textOutputFile, draftjsOutputFile) to have it written exactly there, or an outputLocation folder for all.",
			InputParameters: []*registryv1.ParameterSpec{{Name: ParamInputFile, Type: "locator"}},
			// The format locators are not declared as inputs too: a profile's
			// parameters share one namespace, and they are its outputs.
			OptionalInputParameters: []*registryv1.ParameterSpec{{Name: ParamOutputLocation, Type: "locator"}},
			OutputParameters:        append(formatSpecs(), &registryv1.ParameterSpec{Name: ParamTranscript, Type: "string"}),
			DefaultTimeout:          durationpb.New(4 * time.Hour),
			MaxAttempts:             3,
		},
		Handler: func(ctx context.Context, item *workersdk.WorkItem, progress func(int)) (*jobsv1.JobOutput, float64, error) {
			outs, err := newNamedOutputs(ctx, res, item, transcriptParams(), true)
			if err != nil {
				return nil, 0, err
			}
			if outs.none() {
				return nil, 0, outs.missing(item, transcriptParams())
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
			if _, err := runFFmpeg(ctx, m.duration, func(p int) { progress(p / 5) }, append(m.input.args(), "-map", "0:a:0", "-vn",
				"-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", wav)...); err != nil {
				return nil, 0, err
			}
			words, err := recognise(ctx, wav)
			if err != nil {
				return nil, 0, err
			}
			progress(90)
			cues := toCues(words)
			t := &transcript{words: words, cues: cues, text: transcriptText(cues)}
			locs := map[string]*jobsv1.Locator{}
			for _, f := range transcriptFormats {
				if !outs.wants(f.param) {
					continue
				}
				p := filepath.Join(dir, f.file)
				if err := os.WriteFile(p, f.render(t), 0o600); err != nil {
					return nil, 0, fmt.Errorf("write %s: %w", f.file, err)
				}
				loc, err := outs.put(ctx, f.param, p, f.file, false)
				if err != nil {
					return nil, 0, err
				}
				locs[f.param] = loc
			}
			return &jobsv1.JobOutput{Locators: locs, Data: &structpb.Struct{Fields: map[string]*structpb.Value{
				ParamTranscript: structpb.NewStringValue(t.text),
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

// groupCues splits words into subtitle cues: a new cue per utterance, and
// when a cue would exceed maxCueWords or maxCueSeconds.
func groupCues(words []word) [][]word {
	var groups [][]word
	var cur []word
	for _, w := range words {
		if len(cur) > 0 && (w.utterance != cur[0].utterance || len(cur) == maxCueWords || w.End-cur[0].Start > maxCueSeconds) {
			groups = append(groups, cur)
			cur = nil
		}
		cur = append(cur, w)
	}
	if len(cur) > 0 {
		groups = append(groups, cur)
	}
	return groups
}

// toCues is the cues of groupCues, timed from their first word's start to
// their last word's end.
func toCues(words []word) []cue {
	var cues []cue
	for _, g := range groupCues(words) {
		cues = append(cues, cue{Start: g[0].Start, End: g[len(g)-1].End, Text: cueText(g)})
	}
	return cues
}

func cueText(g []word) string {
	t := make([]string, len(g))
	for i, w := range g {
		t[i] = w.Word
	}
	return strings.Join(t, " ")
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

// draftJS renders the transcript as a Draft.js raw content state (what
// convertFromRaw loads), the way transcript editors hold one: a block per
// cue with its times, each word an entity of type WORD carrying its start,
// end and confidence, so an edited text keeps its timings.
func draftJS(words []word) []byte {
	type entityRange struct {
		Offset int `json:"offset"`
		Length int `json:"length"`
		Key    int `json:"key"`
	}
	type block struct {
		Key               string         `json:"key"`
		Text              string         `json:"text"`
		Type              string         `json:"type"`
		Depth             int            `json:"depth"`
		InlineStyleRanges []any          `json:"inlineStyleRanges"`
		EntityRanges      []entityRange  `json:"entityRanges"`
		Data              map[string]any `json:"data"`
	}
	type entity struct {
		Type       string         `json:"type"`
		Mutability string         `json:"mutability"`
		Data       map[string]any `json:"data"`
	}
	blocks := []block{}
	entities := map[string]entity{}
	for i, g := range groupCues(words) {
		b := block{Key: fmt.Sprintf("c%d", i), Text: cueText(g), Type: "unstyled", InlineStyleRanges: []any{},
			Data: map[string]any{"start": g[0].Start, "end": g[len(g)-1].End}}
		offset := 0
		for j, w := range g {
			if j > 0 {
				offset++ // the space
			}
			// Draft.js offsets count UTF-16 code units, as JavaScript strings do.
			n := len(utf16.Encode([]rune(w.Word)))
			key := len(entities)
			b.EntityRanges = append(b.EntityRanges, entityRange{Offset: offset, Length: n, Key: key})
			entities[strconv.Itoa(key)] = entity{Type: "WORD", Mutability: "MUTABLE",
				Data: map[string]any{"text": w.Word, "start": w.Start, "end": w.End, "confidence": w.Confidence}}
			offset += n
		}
		blocks = append(blocks, b)
	}
	out, _ := json.MarshalIndent(map[string]any{"blocks": blocks, "entityMap": entities}, "", "  ")
	return out
}
