package profiles

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/workersdk"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Names of the thumbnail profile and its parameters.
const (
	ExtractThumbnails = "ExtractThumbnails"
	ParamTimes        = "times"
	ParamInterval     = "interval"
	ParamFormat       = "format"
	ParamThumbnails   = "thumbnails"
	maxThumbnails     = 1000
)

// ThumbnailsProfile extracts JPEG or PNG images at the given times (seconds)
// or every interval seconds (default: one image at the middle), scaled to
// width (default 320, aspect kept). Each image is stored at the output
// location as thumbnail-NNNN.<format>.
func ThumbnailsProfile(res *locator.Resolver) workersdk.Profile {
	return workersdk.Profile{
		Spec: &registryv1.JobProfile{
			Name: ExtractThumbnails, JobType: "TransformJob",
			Description:             "JPEG/PNG thumbnails at given times or every N seconds (ffmpeg).",
			InputParameters:         []*registryv1.ParameterSpec{{Name: ParamInputFile, Type: "locator"}, {Name: ParamOutputLocation, Type: "locator"}},
			OptionalInputParameters: []*registryv1.ParameterSpec{{Name: ParamTimes, Type: "array"}, {Name: ParamInterval, Type: "number"}, {Name: ParamFormat, Type: "string"}, {Name: ParamWidth, Type: "integer"}},
			OutputParameters:        []*registryv1.ParameterSpec{{Name: ParamThumbnails, Type: "array"}},
			DefaultTimeout:          durationpb.New(time.Hour),
			MaxAttempts:             3,
		},
		Handler: func(ctx context.Context, item *workersdk.WorkItem, progress func(int)) (*jobsv1.JobOutput, float64, error) {
			format, err := stringParam(item, ParamFormat, "jpg", "jpg", "png")
			if err != nil {
				return nil, 0, err
			}
			width, err := numberParam(item, ParamWidth, 320, 16, 7680)
			if err != nil {
				return nil, 0, err
			}
			interval, err := numberParam(item, ParamInterval, 0, 0.04, 86400)
			if err != nil {
				return nil, 0, err
			}
			var times []float64
			if v, ok := item.GetInput().GetParameters().GetFields()[ParamTimes]; ok {
				l := v.GetListValue()
				if l == nil || len(l.GetValues()) == 0 || len(l.GetValues()) > maxThumbnails {
					return nil, 0, invalidParam(ParamTimes, fmt.Sprintf("must be a list of 1 to %d times in seconds", maxThumbnails))
				}
				for _, x := range l.GetValues() {
					n, isNum := x.GetKind().(*structpb.Value_NumberValue)
					if !isNum || n.NumberValue < 0 {
						return nil, 0, invalidParam(ParamTimes, "must hold non-negative numbers of seconds")
					}
					times = append(times, n.NumberValue)
				}
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
			switch {
			case times != nil:
				for _, t := range times {
					if t > m.duration {
						return nil, 0, invalidParam(ParamTimes, fmt.Sprintf("time %v is past the end of the media (%.3f s)", t, m.duration))
					}
				}
			case interval > 0:
				for t := 0.0; t < m.duration && len(times) < maxThumbnails; t += interval {
					times = append(times, t)
				}
			default:
				times = []float64{m.duration / 2}
			}
			dir, rm, err := workDir()
			defer rm()
			if err != nil {
				return nil, 0, err
			}
			scale := fmt.Sprintf("scale=%d:-2", int(width)&^1)
			done := 0 // progress reached before storing
			if interval > 0 && item.GetInput().GetParameters().GetFields()[ParamTimes] == nil {
				// One decoding pass picks a frame every interval: seeking once
				// per image would decode each GOP again.
				sel := fmt.Sprintf("select='isnan(prev_selected_t)+gte(t-prev_selected_t\\,%g)',%s", interval-0.001, scale)
				if _, err := runFFmpeg(ctx, m.duration, func(p int) { progress(p * 9 / 10) }, append(m.input.args(), "-map", "0:v:0", "-an",
					"-vf", sel, "-fps_mode", "vfr", "-frames:v", strconv.Itoa(len(times)), "-q:v", "3",
					filepath.Join(dir, "thumbnail-%04d."+format))...); err != nil {
					return nil, 0, err
				}
				done = 90
			}
			thumbs := make([]any, 0, len(times))
			locs := map[string]*jobsv1.Locator{}
			for i, t := range times {
				name := fmt.Sprintf("thumbnail-%04d.%s", i+1, format)
				dst := filepath.Join(dir, name)
				if _, err := os.Stat(dst); err != nil {
					// Seek before -i: fast, and exact since ffmpeg decodes from
					// the previous keyframe. Near the end, take the last frame
					// instead of none.
					ss := min(t, max(m.duration-0.1, 0))
					if _, err := runFFmpeg(ctx, 0, func(int) {}, append(append([]string{"-ss", fmt.Sprintf("%.3f", ss)}, m.input.args()...), "-map", "0:v:0",
						"-frames:v", "1", "-vf", scale, "-q:v", "3", dst)...); err != nil {
						return nil, 0, err
					}
				}
				if fi, err := os.Stat(dst); err != nil || fi.Size() == 0 {
					return nil, 0, badMedia(fmt.Sprintf("has no decodable frame at %.3f s", t))
				}
				loc, err := outs.put(ctx, dst, name, len(times) == 1)
				if err != nil {
					return nil, 0, err
				}
				locs[fmt.Sprintf("thumbnail%d", i+1)] = loc
				thumbs = append(thumbs, map[string]any{"time": t, "timecode": timecode(t), "url": loc.GetUrl()})
				progress(done + (100-done)*(i+1)/len(times))
			}
			list, err := structpb.NewList(thumbs)
			if err != nil {
				return nil, 0, fmt.Errorf("thumbnails output: %w", err)
			}
			return &jobsv1.JobOutput{Locators: locs, Data: &structpb.Struct{Fields: map[string]*structpb.Value{ParamThumbnails: structpb.NewListValue(list)}}}, m.duration, nil
		},
	}
}
