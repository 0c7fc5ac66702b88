package profiles

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/workersdk"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Names of the analysis profiles and their parameters.
const (
	MeasureLoudness    = "MeasureLoudness"
	ParamTargetLUFS    = "targetLufs"
	ParamToleranceLU   = "toleranceLu"
	ParamMaxTruePeak   = "maxTruePeakDbtp"
	ParamLoudness      = "loudness"
	DetectShots        = "DetectShots"
	ParamThreshold     = "threshold"
	ParamShots         = "shots"
	maxShotsReported   = 100000
	ebur128SummaryNote = "ebur128 summary"
)

// LoudnessProfile measures EBU R128 loudness with ffmpeg's ebur128 filter:
// integrated loudness, loudness range and true peak of the first audio
// stream, and whether it meets the target (default -23 LUFS ± 1 LU, true
// peak at most -1 dBTP).
func LoudnessProfile(res *locator.Resolver) workersdk.Profile {
	return workersdk.Profile{
		Spec: &registryv1.JobProfile{
			Name: MeasureLoudness, JobType: "QAJob",
			Description:             "EBU R128 loudness (integrated, range, true peak) with pass/fail against a target, measured by ffmpeg ebur128.",
			InputParameters:         []*registryv1.ParameterSpec{{Name: ParamInputFile, Type: "locator"}},
			OptionalInputParameters: []*registryv1.ParameterSpec{{Name: ParamTargetLUFS, Type: "number"}, {Name: ParamToleranceLU, Type: "number"}, {Name: ParamMaxTruePeak, Type: "number"}},
			OutputParameters:        []*registryv1.ParameterSpec{{Name: ParamLoudness, Type: "object"}},
			DefaultTimeout:          durationpb.New(time.Hour),
			MaxAttempts:             3,
		},
		Handler: func(ctx context.Context, item *workersdk.WorkItem, progress func(int)) (*jobsv1.JobOutput, float64, error) {
			target, err := numberParam(item, ParamTargetLUFS, -23, -70, 0)
			if err != nil {
				return nil, 0, err
			}
			tol, err := numberParam(item, ParamToleranceLU, 1, 0, 20)
			if err != nil {
				return nil, 0, err
			}
			maxPeak, err := numberParam(item, ParamMaxTruePeak, -1, -70, 20)
			if err != nil {
				return nil, 0, err
			}
			m, cleanup, err := openMedia(ctx, res, item, false, true)
			defer cleanup()
			if err != nil {
				return nil, 0, err
			}
			// framelog=verbose keeps the per-100ms lines out of the info log
			// we parse; the summary is printed at info.
			stderr, err := runFFmpeg(ctx, m.duration, progress, append(m.input.args(), "-map", "0:a:0", "-vn",
				"-af", "ebur128=peak=true:framelog=verbose", "-f", "null", "-")...)
			if err != nil {
				return nil, 0, err
			}
			l, err := parseEBUR128(stderr)
			if err != nil {
				return nil, 0, workersdk.ToolError("ffmpeg ebur128", err, stderr)
			}
			pass := math.Abs(l.integrated-target) <= tol && l.truePeak <= maxPeak
			out, err := structpb.NewStruct(map[string]any{
				"integratedLoudnessLufs": l.integrated, "loudnessRangeLu": l.lra, "truePeakDbtp": l.truePeak,
				"targetLufs": target, "toleranceLu": tol, "maxTruePeakDbtp": maxPeak, "pass": pass,
			})
			if err != nil {
				return nil, 0, fmt.Errorf("loudness output: %w", err)
			}
			return &jobsv1.JobOutput{Data: &structpb.Struct{Fields: map[string]*structpb.Value{ParamLoudness: structpb.NewStructValue(out)}}}, m.duration, nil
		},
	}
}

type loudness struct{ integrated, lra, truePeak float64 }

var (
	reSummary = regexp.MustCompile(`(?s)Summary:.*`)
	reI       = regexp.MustCompile(`\bI:\s+(-?[\d.]+|-inf) LUFS`)
	reLRA     = regexp.MustCompile(`\bLRA:\s+(-?[\d.]+) LU`)
	rePeak    = regexp.MustCompile(`\bPeak:\s+(-?[\d.]+|-inf) dBFS`)
)

// parseEBUR128 reads the filter's summary. Silence measures -inf (-70 is
// the R128 absolute gate, reported instead so JSON can carry it).
func parseEBUR128(stderr []byte) (loudness, error) {
	s := reSummary.Find(stderr)
	if s == nil {
		return loudness{}, fmt.Errorf("no %s in the output", ebur128SummaryNote)
	}
	num := func(re *regexp.Regexp, what string) (float64, error) {
		m := re.FindSubmatch(s)
		if m == nil {
			return 0, fmt.Errorf("no %s in the %s", what, ebur128SummaryNote)
		}
		if string(m[1]) == "-inf" {
			return -70, nil
		}
		return strconv.ParseFloat(string(m[1]), 64)
	}
	var l loudness
	var err error
	if l.integrated, err = num(reI, "integrated loudness"); err != nil {
		return l, err
	}
	if l.lra, err = num(reLRA, "loudness range"); err != nil {
		return l, err
	}
	if l.truePeak, err = num(rePeak, "true peak"); err != nil {
		return l, err
	}
	return l, nil
}

// ShotsProfile finds shot boundaries with ffmpeg's scene-change score: a
// frame scoring above threshold (default 0.3) starts a new shot. The shots
// are in the job output's data and, when the job gives an outputFile
// locator (written exactly there) or an outputLocation, also in a JSON
// file, which is what a Cortex VideoAnalysis client collects.
func ShotsProfile(res *locator.Resolver) workersdk.Profile {
	return workersdk.Profile{
		Spec: &registryv1.JobProfile{
			Name: DetectShots, JobType: "AIJob",
			Description: "Shot boundaries (start, end, timecode) by ffmpeg scene-change detection; also written as JSON (shots.json) " +
				"exactly at an outputFile input locator, or under an outputLocation, when given.",
			InputParameters:         []*registryv1.ParameterSpec{{Name: ParamInputFile, Type: "locator"}},
			OptionalInputParameters: []*registryv1.ParameterSpec{{Name: ParamThreshold, Type: "number"}, {Name: ParamOutputLocation, Type: "locator"}},
			OutputParameters:        []*registryv1.ParameterSpec{{Name: ParamShots, Type: "array"}, {Name: ParamOutputFile, Type: "locator"}},
			DefaultTimeout:          durationpb.New(2 * time.Hour),
			MaxAttempts:             3,
		},
		Handler: func(ctx context.Context, item *workersdk.WorkItem, progress func(int)) (*jobsv1.JobOutput, float64, error) {
			threshold, err := numberParam(item, ParamThreshold, 0.3, 0.01, 1)
			if err != nil {
				return nil, 0, err
			}
			outs, err := newNamedOutputs(ctx, res, item, []string{ParamOutputFile}, false)
			if err != nil {
				return nil, 0, err
			}
			m, cleanup, err := openMedia(ctx, res, item, true, false)
			defer cleanup()
			if err != nil {
				return nil, 0, err
			}
			stderr, err := runFFmpeg(ctx, m.duration, progress, append(m.input.args(), "-map", "0:v:0", "-an",
				"-vf", fmt.Sprintf("select='gt(scene,%g)',showinfo", threshold), "-f", "null", "-")...)
			if err != nil {
				return nil, 0, err
			}
			cuts := parseCuts(stderr, m.duration)
			shots := make([]any, 0, len(cuts)+1)
			start := 0.0
			for i, end := range append(cuts, m.duration) {
				if len(shots) == maxShotsReported {
					break
				}
				shots = append(shots, map[string]any{
					"index": i, "start": round3(start), "end": round3(end),
					"startTimecode": timecode(start), "endTimecode": timecode(end),
				})
				start = end
			}
			list, err := structpb.NewList(shots)
			if err != nil {
				return nil, 0, fmt.Errorf("shots output: %w", err)
			}
			out := &jobsv1.JobOutput{Data: &structpb.Struct{Fields: map[string]*structpb.Value{ParamShots: structpb.NewListValue(list)}}}
			if outs.wants(ParamOutputFile) {
				loc, err := writeShots(ctx, outs, out.GetData())
				if err != nil {
					return nil, 0, err
				}
				out.Locators = map[string]*jobsv1.Locator{ParamOutputFile: loc}
			}
			return out, m.duration, nil
		},
	}
}

// writeShots stores the output data ({"shots": [...]}) as shots.json.
func writeShots(ctx context.Context, outs *namedOutputs, data *structpb.Struct) (*jobsv1.Locator, error) {
	b, err := json.MarshalIndent(data.AsMap(), "", "  ")
	if err != nil {
		return nil, fmt.Errorf("shots json: %w", err)
	}
	dir, rm, err := workDir()
	defer rm()
	if err != nil {
		return nil, err
	}
	p := filepath.Join(dir, "shots.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		return nil, fmt.Errorf("write shots.json: %w", err)
	}
	return outs.put(ctx, ParamOutputFile, p, "shots.json", true)
}

var rePTS = regexp.MustCompile(`Parsed_showinfo.*\bpts_time:\s*([\d.]+)`)

// parseCuts returns the sorted times of the frames showinfo printed,
// ignoring any at the very start or end.
func parseCuts(stderr []byte, duration float64) []float64 {
	var cuts []float64
	for _, m := range rePTS.FindAllSubmatch(stderr, -1) {
		t, err := strconv.ParseFloat(string(m[1]), 64)
		if err == nil && t > 0.05 && t < duration-0.05 {
			cuts = append(cuts, t)
		}
	}
	sort.Float64s(cuts)
	return cuts
}

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }
