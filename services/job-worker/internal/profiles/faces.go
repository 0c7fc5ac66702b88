package profiles

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/workersdk"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Names of the face detection profile and its parameters.
const (
	DetectFaces       = "DetectFaces"
	ParamMinFaceSize  = "minFaceSize"
	ParamMinNeighbors = "minNeighbors"
	ParamFaces        = "faces"
	ParamFaceSummary  = "faceSummary"
	maxFaceFrames     = 3600
	maxFacesReported  = 5000
)

// FacesProfile finds frontal faces with OpenCV's Haar cascade in an image,
// or in frames of a video sampled every interval seconds (default 1), and
// reports each face's time, timecode and box. Faces smaller than
// minFaceSize (a fraction of the frame height, default 0.05) are not
// looked for: frames are scaled so such a face fills the cascade's 24 px
// window, which keeps the cost per frame the same at any resolution. Its
// quantity is the video's duration, or 1 for an image.
func FacesProfile(res *locator.Resolver, eng FaceEngine) workersdk.Profile {
	return workersdk.Profile{
		Spec: &registryv1.JobProfile{
			Name: DetectFaces, JobType: "AIJob",
			Description:     "Frontal faces in an image or in video frames, with timecodes and boxes (OpenCV Haar cascade).",
			InputParameters: []*registryv1.ParameterSpec{{Name: ParamInputFile, Type: "locator"}},
			OptionalInputParameters: []*registryv1.ParameterSpec{{Name: ParamInterval, Type: "number"},
				{Name: ParamMinFaceSize, Type: "number"}, {Name: ParamMinNeighbors, Type: "integer"}},
			OutputParameters: []*registryv1.ParameterSpec{{Name: ParamFaces, Type: "array"}, {Name: ParamFaceSummary, Type: "object"}},
			DefaultTimeout:   durationpb.New(2 * time.Hour),
			MaxAttempts:      3,
		},
		Handler: func(ctx context.Context, item *workersdk.WorkItem, progress func(int)) (*jobsv1.JobOutput, float64, error) {
			interval, err := numberParam(item, ParamInterval, 1, 0.04, 3600)
			if err != nil {
				return nil, 0, err
			}
			minFace, err := numberParam(item, ParamMinFaceSize, 0.05, 0.01, 1)
			if err != nil {
				return nil, 0, err
			}
			minNeighbors, err := numberParam(item, ParamMinNeighbors, 3, 1, 50)
			if err != nil || minNeighbors != math.Trunc(minNeighbors) {
				return nil, 0, invalidParam(ParamMinNeighbors, "must be an integer between 1 and 50")
			}
			pic, cleanup, err := openPicture(ctx, res, item)
			defer cleanup()
			if err != nil {
				return nil, 0, err
			}
			// Square pixels (anamorphic video is stretched to its display
			// aspect), grey, and no taller than needed for the smallest
			// face asked for to fill the cascade's window.
			scale := fmt.Sprintf("scale=w='trunc(oh*dar/2)*2':h='min(ih,%d)',setsar=1,format=gray", int(math.Ceil(faceWindow/minFace)))
			args := append(pic.input.args(), "-map", "0:v:0", "-an", "-sn", "-dn")
			expected := 1
			if pic.isImage {
				args = append(args, "-frames:v", "1", "-vf", scale)
			} else {
				// Long media: fewer frames rather than an unbounded run.
				interval = max(interval, pic.duration/maxFaceFrames)
				expected = int(math.Ceil(pic.duration/interval - 1e-9))
				// fps picks the frame shown at each multiple of interval, so
				// frame n is at exactly n*interval.
				args = append(args, "-vf", fmt.Sprintf("fps=fps=1/%s,%s", strconv.FormatFloat(interval, 'g', -1, 64), scale))
			}
			args = append(args, "-f", "image2pipe", "-c:v", "pgm", "pipe:1")
			run, err := eng.detect(ctx, args, int(minNeighbors), minFace, expected, progress)
			if err != nil {
				return nil, 0, err
			}
			if len(run.frames) == 0 {
				return nil, 0, badMedia("has no decodable video frame")
			}
			faces, summary := faceOutput(run, pic, interval)
			qty := pic.duration
			if pic.isImage {
				qty = 1
			}
			return &jobsv1.JobOutput{Data: &structpb.Struct{Fields: map[string]*structpb.Value{
				ParamFaces: structpb.NewListValue(faces), ParamFaceSummary: structpb.NewStructValue(summary),
			}}}, qty, nil
		},
	}
}

// faceOutput lists the faces found, in time order, with boxes in the
// input's pixels and normalised to its width and height (0-1), and
// summarises the run.
func faceOutput(run faceRun, pic *media, interval float64) (*structpb.ListValue, *structpb.Struct) {
	// The detector saw the picture upright (ffmpeg applies the rotation of
	// phone video): its pixels are the probed ones, turned alike.
	w, h := pic.width, pic.height
	if f := run.frames[0]; (f.Width > f.Height) != (w > h) && f.Width != f.Height {
		w, h = h, w
	}
	list := &structpb.ListValue{}
	total, withFaces := 0, 0
	for _, f := range run.frames {
		if len(f.Faces) > 0 {
			withFaces++
		}
		t := 0.0
		if !pic.isImage {
			t = float64(f.Frame) * interval
		}
		for _, b := range f.Faces {
			total++
			if total > maxFacesReported {
				continue
			}
			nx, ny := float64(b[0])/float64(f.Width), float64(b[1])/float64(f.Height)
			nw, nh := float64(b[2])/float64(f.Width), float64(b[3])/float64(f.Height)
			list.Values = append(list.Values, structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
				"time": structpb.NewNumberValue(round3(t)), "timecode": structpb.NewStringValue(timecode(t)),
				"box":           boxValue(math.Round(nx*float64(w)), math.Round(ny*float64(h)), math.Round(nw*float64(w)), math.Round(nh*float64(h))),
				"normalizedBox": boxValue(round4(nx), round4(ny), round4(nw), round4(nh)),
				// Raw detections merged into this box: more is surer.
				"neighbors": structpb.NewNumberValue(float64(b[4])),
			}}))
		}
	}
	summary := map[string]*structpb.Value{
		"engine": structpb.NewStringValue(run.engine), "framesAnalysed": structpb.NewNumberValue(float64(len(run.frames))),
		"framesWithFaces": structpb.NewNumberValue(float64(withFaces)), "faceCount": structpb.NewNumberValue(float64(total)),
		"truncated": structpb.NewBoolValue(total > maxFacesReported),
		"width":     structpb.NewNumberValue(float64(w)), "height": structpb.NewNumberValue(float64(h)),
	}
	if !pic.isImage {
		summary["interval"] = structpb.NewNumberValue(interval)
	}
	return list, &structpb.Struct{Fields: summary}
}

func boxValue(x, y, w, h float64) *structpb.Value {
	return structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
		"x": structpb.NewNumberValue(x), "y": structpb.NewNumberValue(y),
		"width": structpb.NewNumberValue(w), "height": structpb.NewNumberValue(h),
	}})
}

func round4(f float64) float64 { return math.Round(f*10000) / 10000 }
