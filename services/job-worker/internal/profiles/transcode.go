package profiles

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/workersdk"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Names of the transcoding profiles and their parameters.
const (
	Transcode         = "Transcode"
	CreateProxy       = "CreateProxy"
	ParamOutputFile   = "outputFile"
	ParamWidth        = "width"
	ParamHeight       = "height"
	ParamVideoBitrate = "videoBitrateKbps"
	ParamAudioBitrate = "audioBitrateKbps"
)

// TranscodeProfile encodes the input to H.264/AAC MP4 at the requested
// height (width follows the aspect ratio unless given) and bitrates.
// CreateProxy is the same with proxy defaults (360p, 800 kb/s).
func TranscodeProfile(res *locator.Resolver, name string) workersdk.Profile {
	defHeight, defVideo, file := 720.0, 2500.0, "transcode.mp4"
	desc := "Transcode to H.264/AAC MP4 at a requested size and bitrate (ffmpeg)."
	if name == CreateProxy {
		defHeight, defVideo, file = 360, 800, "proxy.mp4"
		desc = "Low-resolution H.264/AAC MP4 proxy for browsing (ffmpeg)."
	}
	return workersdk.Profile{
		Spec: &registryv1.JobProfile{
			Name: name, JobType: "TransformJob", Description: desc,
			InputParameters: []*registryv1.ParameterSpec{{Name: ParamInputFile, Type: "locator"}, {Name: ParamOutputLocation, Type: "locator"}},
			OptionalInputParameters: []*registryv1.ParameterSpec{
				{Name: ParamWidth, Type: "integer"}, {Name: ParamHeight, Type: "integer"},
				{Name: ParamVideoBitrate, Type: "integer"}, {Name: ParamAudioBitrate, Type: "integer"},
			},
			OutputParameters: []*registryv1.ParameterSpec{{Name: ParamOutputFile, Type: "locator"}},
			DefaultTimeout:   durationpb.New(2 * time.Hour),
			MaxAttempts:      3,
		},
		Handler: func(ctx context.Context, item *workersdk.WorkItem, progress func(int)) (*jobsv1.JobOutput, float64, error) {
			width, err := numberParam(item, ParamWidth, 0, 16, 7680)
			if err != nil {
				return nil, 0, err
			}
			height, err := numberParam(item, ParamHeight, defHeight, 16, 4320)
			if err != nil {
				return nil, 0, err
			}
			vkbps, err := numberParam(item, ParamVideoBitrate, defVideo, 50, 200000)
			if err != nil {
				return nil, 0, err
			}
			akbps, err := numberParam(item, ParamAudioBitrate, 128, 16, 1024)
			if err != nil {
				return nil, 0, err
			}
			outs, err := newOutputs(ctx, res, item)
			if err != nil {
				return nil, 0, err
			}
			m, cleanup, err := openMedia(ctx, res, item, true, false)
			defer cleanup()
			if err != nil {
				return nil, 0, err
			}
			dir, rm, err := workDir()
			defer rm()
			if err != nil {
				return nil, 0, err
			}
			// H.264 with 4:2:0 needs even dimensions; -2 keeps the aspect.
			w := "-2"
			if width > 0 {
				w = fmt.Sprint(int(width) &^ 1)
			}
			scale := fmt.Sprintf("scale=%s:%d,setsar=1", w, int(height)&^1)
			dst := filepath.Join(dir, file)
			args := append(m.input.args(), "-map", "0:v:0", "-map", "0:a:0?", "-vf", scale,
				"-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
				"-b:v", fmt.Sprintf("%dk", int(vkbps)), "-maxrate", fmt.Sprintf("%dk", int(vkbps*1.5)), "-bufsize", fmt.Sprintf("%dk", int(vkbps*2)),
				"-c:a", "aac", "-b:a", fmt.Sprintf("%dk", int(akbps)), "-movflags", "+faststart", dst)
			if _, err := runFFmpeg(ctx, m.duration, progress, args...); err != nil {
				return nil, 0, err
			}
			loc, err := outs.put(ctx, dst, file, true)
			if err != nil {
				return nil, 0, err
			}
			return &jobsv1.JobOutput{
				Locators: map[string]*jobsv1.Locator{ParamOutputFile: loc},
				Data: &structpb.Struct{Fields: map[string]*structpb.Value{
					ParamOutputFile: structpb.NewStringValue(loc.GetUrl()),
				}},
			}, m.duration, nil
		},
	}
}
