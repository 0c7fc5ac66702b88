package profiles

import (
	"bufio"
	"bytes"
	"context"
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

// Names of the OCR profile and its parameters.
const (
	ExtractText    = "ExtractText"
	ParamLanguage  = "language"
	ParamText      = "text"
	ParamMinConf   = "minConfidence"
	maxOCRFrames   = 3600
	ocrFrameFormat = "frame-%05d.png"
)

// Tesseract is the tesseract binary run.
var Tesseract = "tesseract"

// OCRProfile recognises text with tesseract in an image, or in frames of a
// video sampled every interval seconds (default 1), with the time and the
// bounding box of every word. Its quantity is the video's duration, or 1 for
// an image.
func OCRProfile(res *locator.Resolver) workersdk.Profile {
	return workersdk.Profile{
		Spec: &registryv1.JobProfile{
			Name: ExtractText, JobType: "AIJob",
			Description:             "Text in images or video frames with timecodes and word boxes (tesseract OCR).",
			InputParameters:         []*registryv1.ParameterSpec{{Name: ParamInputFile, Type: "locator"}},
			OptionalInputParameters: []*registryv1.ParameterSpec{{Name: ParamInterval, Type: "number"}, {Name: ParamLanguage, Type: "string"}, {Name: ParamMinConf, Type: "number"}},
			OutputParameters:        []*registryv1.ParameterSpec{{Name: ParamText, Type: "array"}},
			DefaultTimeout:          durationpb.New(2 * time.Hour),
			MaxAttempts:             3,
		},
		Handler: func(ctx context.Context, item *workersdk.WorkItem, progress func(int)) (*jobsv1.JobOutput, float64, error) {
			interval, err := numberParam(item, ParamInterval, 1, 0.04, 3600)
			if err != nil {
				return nil, 0, err
			}
			lang, err := stringParam(item, ParamLanguage, "eng")
			if err != nil {
				return nil, 0, err
			}
			if !validLang(lang) {
				return nil, 0, invalidParam(ParamLanguage, "must be tesseract language codes such as eng or eng+fra")
			}
			minConf, err := numberParam(item, ParamMinConf, 50, 0, 100)
			if err != nil {
				return nil, 0, err
			}
			m, cleanup, err := openPicture(ctx, res, item)
			defer cleanup()
			if err != nil {
				return nil, 0, err
			}
			duration, isImage := m.duration, m.isImage
			dir, rm, err := workDir()
			defer rm()
			if err != nil {
				return nil, 0, err
			}
			// Frames (or the image) become PNGs: tesseract then reads any
			// input ffmpeg can decode.
			var times []float64
			if isImage {
				if _, err := runFFmpeg(ctx, 0, func(int) {}, append(m.input.args(), "-frames:v", "1", filepath.Join(dir, fmt.Sprintf(ocrFrameFormat, 1)))...); err != nil {
					return nil, 0, err
				}
				times = []float64{0}
			} else {
				if duration/interval > maxOCRFrames {
					interval = duration / maxOCRFrames
				}
				sel := fmt.Sprintf("select='isnan(prev_selected_t)+gte(t-prev_selected_t\\,%g)'", interval-0.001)
				if _, err := runFFmpeg(ctx, duration, func(p int) { progress(p / 4) }, append(m.input.args(), "-map", "0:v:0", "-an",
					"-vf", sel, "-fps_mode", "vfr", filepath.Join(dir, ocrFrameFormat))...); err != nil {
					return nil, 0, err
				}
				for t := 0.0; t < duration && len(times) < maxOCRFrames; t += interval {
					times = append(times, t)
				}
			}
			// One tesseract run over a list of the frames loads the model once.
			var frames []string
			for i := range times {
				frame := filepath.Join(dir, fmt.Sprintf(ocrFrameFormat, i+1))
				if _, err := os.Stat(frame); err != nil {
					break // fewer frames than expected (variable frame rate)
				}
				frames = append(frames, frame)
			}
			list := filepath.Join(dir, "frames.txt")
			if err := os.WriteFile(list, []byte(strings.Join(frames, "\n")+"\n"), 0o600); err != nil {
				return nil, 0, fmt.Errorf("frame list: %w", err)
			}
			pages, err := tesseract(ctx, list, lang, minConf)
			if err != nil {
				return nil, 0, err
			}
			progress(99)
			var results []any
			for i := range frames {
				words := pages[i+1]
				if len(words) == 0 {
					continue
				}
				texts := make([]string, len(words))
				for j, w := range words {
					texts[j] = w.(map[string]any)["text"].(string)
				}
				t := times[i]
				results = append(results, map[string]any{"time": round3(t), "timecode": timecode(t), "text": strings.Join(texts, " "), "words": words})
			}
			out, err := structpb.NewList(results)
			if err != nil {
				return nil, 0, fmt.Errorf("text output: %w", err)
			}
			qty := duration
			if isImage {
				qty = 1
			}
			return &jobsv1.JobOutput{Data: &structpb.Struct{Fields: map[string]*structpb.Value{ParamText: structpb.NewListValue(out)}}}, qty, nil
		},
	}
}

func validLang(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r == '_' || r == '+') {
			return false
		}
	}
	return true
}

// tesseract returns, by page (1-based line of the list file), the words
// tesseract finds in the images listed with at least minConf confidence:
// [{text, confidence, box{left, top, width, height}}].
func tesseract(ctx context.Context, listFile, lang string, minConf float64) (map[int][]any, error) {
	ctx, end := toolSpan(ctx, Tesseract)
	cmd := exec.CommandContext(ctx, Tesseract, listFile, "stdout", "-l", lang, "tsv")
	// One thread: a worker runs several jobs at once, and OpenMP threads
	// contending for the cores make tesseract slower, not faster.
	cmd.Env = append(os.Environ(), "OMP_THREAD_LIMIT=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	end(err)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("tesseract: %w", context.Cause(ctx))
		}
		return nil, workersdk.ToolError("tesseract", err, stderr.Bytes())
	}
	pages := map[int][]any{}
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		f := strings.Split(sc.Text(), "\t")
		// level page block par line word left top width height conf text
		if len(f) != 12 || f[0] != "5" || strings.TrimSpace(f[11]) == "" {
			continue
		}
		conf, err := strconv.ParseFloat(f[10], 64)
		if err != nil || conf < minConf {
			continue
		}
		n := func(s string) float64 { v, _ := strconv.Atoi(s); return float64(v) }
		page, _ := strconv.Atoi(f[1])
		pages[page] = append(pages[page], map[string]any{
			"text": strings.TrimSpace(f[11]), "confidence": round3(conf),
			"box": map[string]any{"left": n(f[6]), "top": n(f[7]), "width": n(f[8]), "height": n(f[9])},
		})
	}
	return pages, nil
}
