// Package profiles holds the job profiles the worker has built in.
package profiles

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/workersdk"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Names of the built-in profile and its parameters.
const (
	ExtractTechnicalMetadata = "ExtractTechnicalMetadata"
	ParamInputFile           = "inputFile"
	ParamTechnicalMetadata   = "technicalMetadata"
)

// Builtin returns every profile this worker offers.
func Builtin(res *locator.Resolver) []workersdk.Profile {
	return []workersdk.Profile{
		TechnicalMetadata(res), TranscodeProfile(res, Transcode), TranscodeProfile(res, CreateProxy),
		ThumbnailsProfile(res), LoudnessProfile(res), ShotsProfile(res), OCRProfile(res), SpeechProfile(res),
		SleepProfile(), NoOpProfile(),
	}
}

// TechnicalMetadata is the ExtractTechnicalMetadata profile: ffprobe on the
// input, reporting container and stream properties.
func TechnicalMetadata(res *locator.Resolver) workersdk.Profile {
	return workersdk.Profile{
		Spec: &registryv1.JobProfile{
			Name:             ExtractTechnicalMetadata,
			JobType:          "AmeJob",
			Description:      "Technical metadata of a media file (container, duration, streams, codecs) read with ffprobe.",
			InputParameters:  []*registryv1.ParameterSpec{{Name: ParamInputFile, Type: "locator"}},
			OutputParameters: []*registryv1.ParameterSpec{{Name: ParamTechnicalMetadata, Type: "object"}},
			DefaultTimeout:   durationpb.New(5 * time.Minute),
			MaxAttempts:      3,
		},
		Handler: func(ctx context.Context, item *workersdk.WorkItem, progress func(int)) (*jobsv1.JobOutput, float64, error) {
			url, err := workersdk.InputLocator(item, ParamInputFile)
			if err != nil {
				return nil, 0, err
			}
			path, cleanup, err := res.Open(ctx, url)
			defer cleanup()
			if err != nil {
				return nil, 0, workersdk.InputError(ParamInputFile, url, err)
			}
			progress(10)
			meta, duration, err := Probe(ctx, path)
			if err != nil {
				return nil, 0, err
			}
			progress(100)
			return &jobsv1.JobOutput{Data: &structpb.Struct{Fields: map[string]*structpb.Value{
				ParamTechnicalMetadata: structpb.NewStructValue(meta),
			}}}, duration, nil
		},
	}
}

// ffprobeOutput is the part of `ffprobe -print_format json` we report.
// ffprobe prints numbers that may be fractional as strings.
type ffprobeOutput struct {
	Format struct {
		FormatName string `json:"format_name"`
		Duration   string `json:"duration"`
		Size       string `json:"size"`
		BitRate    string `json:"bit_rate"`
	} `json:"format"`
	Streams []struct {
		Index      int    `json:"index"`
		CodecType  string `json:"codec_type"`
		CodecName  string `json:"codec_name"`
		Width      int    `json:"width"`
		Height     int    `json:"height"`
		SampleRate string `json:"sample_rate"`
		Channels   int    `json:"channels"`
		Duration   string `json:"duration"`
	} `json:"streams"`
}

// FFprobe is the ffprobe binary run (a variable for tests and packaging).
var FFprobe = "ffprobe"

// Probe runs ffprobe on path and returns the technical metadata
// ({"format": {...}, "streams": [...]}, absent fields omitted) and the
// duration in seconds. The process is killed when ctx ends. An input of a
// format not in inputFormats is refused (invalid-input) before anything it
// names is opened.
func Probe(ctx context.Context, path string) (*structpb.Struct, float64, error) {
	meta, duration, _, err := probe(ctx, path)
	return meta, duration, err
}

// probe is Probe, also returning how ffmpeg is to open the input.
func probe(ctx context.Context, path string) (*structpb.Struct, float64, mediaInput, error) {
	in := mediaInput{path: path}
	out, refused, err := runFFprobe(ctx, in)
	if imageRetry(refused, path) {
		in.image = true
		out, _, err = runFFprobe(ctx, in)
	}
	if err != nil {
		return nil, 0, in, err
	}
	meta, duration, err := technicalMetadata(out)
	return meta, duration, in, err
}

// runFFprobe runs ffprobe on the input. When -format_whitelist refused
// it, refused names the format (and err is the problem).
func runFFprobe(ctx context.Context, in mediaInput) (_ *ffprobeOutput, refused string, _ error) {
	ctx, end := toolSpan(ctx, FFprobe)
	cmd := exec.CommandContext(ctx, FFprobe, append([]string{"-v", "error", "-print_format", "json", "-show_format", "-show_streams"}, in.args()...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Don't wait forever for pipes held by a killed process's children.
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	end(err)
	if err != nil {
		if ctx.Err() != nil {
			return nil, "", fmt.Errorf("ffprobe: %w", context.Cause(ctx))
		}
		if name := refusedFormat(stderr.Bytes()); name != "" {
			return nil, name, unsupportedFormat(name)
		}
		return nil, "", workersdk.ToolError("ffprobe", err, stderr.Bytes())
	}
	var out ffprobeOutput
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		return nil, "", workersdk.ToolError("ffprobe", fmt.Errorf("parse output: %w", err), stderr.Bytes())
	}
	return &out, "", nil
}

// technicalMetadata is ffprobe's output as reported, and the duration.
func technicalMetadata(out *ffprobeOutput) (*structpb.Struct, float64, error) {
	format := map[string]any{}
	putString(format, "formatName", out.Format.FormatName)
	duration, hasDuration := putNumber(format, "duration", out.Format.Duration)
	putNumber(format, "size", out.Format.Size)
	putNumber(format, "bitRate", out.Format.BitRate)

	streams := make([]any, 0, len(out.Streams))
	for _, s := range out.Streams {
		m := map[string]any{"index": s.Index}
		putString(m, "codecType", s.CodecType)
		putString(m, "codecName", s.CodecName)
		putInt(m, "width", s.Width)
		putInt(m, "height", s.Height)
		putNumber(m, "sampleRate", s.SampleRate)
		putInt(m, "channels", s.Channels)
		d, ok := putNumber(m, "duration", s.Duration)
		if !hasDuration && ok && d > duration {
			// Some inputs (raw streams) have no container duration.
			duration = d
		}
		streams = append(streams, m)
	}
	meta, err := structpb.NewStruct(map[string]any{"format": format, "streams": streams})
	if err != nil {
		return nil, 0, fmt.Errorf("technical metadata: %w", err)
	}
	return meta, duration, nil
}

func putString(m map[string]any, k, v string) {
	if v != "" {
		m[k] = v
	}
}

func putInt(m map[string]any, k string, v int) {
	if v != 0 {
		m[k] = v
	}
}

// putNumber stores ffprobe's numeric string v as a number; "N/A" and empty
// are absent.
func putNumber(m map[string]any, k, v string) (float64, bool) {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return 0, false
	}
	m[k] = f
	return f, true
}
