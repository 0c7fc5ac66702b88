package profiles

import (
	"math"
	"testing"

	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/testmedia"
	"github.com/medius-platform/medius/pkg/workersdk"
)

func TestMeasureLoudness(t *testing.T) {
	t.Parallel() // the tools are separate processes: overlap their start-up and I/O
	dir := t.TempDir()
	tone := testmedia.Tone(t, dir, -23)
	for _, s := range stores(t) {
		t.Run(s.name, func(t *testing.T) {
			out, qty, err := run(t, LoudnessProfile(s.res), workItem(MeasureLoudness, s.input(t, tone, "tone.wav"), "", nil))
			if err != nil {
				t.Fatal(err)
			}
			l := out.GetData().GetFields()[ParamLoudness].GetStructValue().AsMap()
			t.Logf("generated -23 LUFS, measured %v", l)
			if i := l["integratedLoudnessLufs"].(float64); math.Abs(i+23) > 0.5 {
				t.Errorf("integrated loudness = %v LUFS, want -23 ± 0.5", i)
			}
			if lra := l["loudnessRangeLu"].(float64); lra > 1 {
				t.Errorf("loudness range of a steady tone = %v LU", lra)
			}
			// Peak of the tone: -23 + 3.01 = -19.99 dBFS.
			if p := l["truePeakDbtp"].(float64); math.Abs(p+20) > 0.5 {
				t.Errorf("true peak = %v dBTP, want about -20", p)
			}
			if l["pass"] != true {
				t.Errorf("a -23 LUFS tone fails the default target: %v", l)
			}
			if math.Abs(qty-4) > 0.1 {
				t.Errorf("verified quantity = %v, want 4", qty)
			}
		})
	}
	t.Run("off target", func(t *testing.T) {
		loud := testmedia.Tone(t, t.TempDir(), -16)
		res := &locator.Resolver{Roots: []string{loud[:len(loud)-len("/tone.wav")]}}
		out, _, err := run(t, LoudnessProfile(res), workItem(MeasureLoudness, "file://"+loud, "", nil))
		if err != nil {
			t.Fatal(err)
		}
		l := out.GetData().GetFields()[ParamLoudness].GetStructValue().AsMap()
		if i := l["integratedLoudnessLufs"].(float64); math.Abs(i+16) > 0.5 || l["pass"] != false {
			t.Errorf("a -16 LUFS tone: %v, want -16 ± 0.5 and fail", l)
		}
	})
	t.Run("no audio", func(t *testing.T) {
		vdir := t.TempDir()
		video := testmedia.Scenes(t, vdir)
		_, _, err := run(t, LoudnessProfile(&locator.Resolver{Roots: []string{vdir}}), workItem(MeasureLoudness, "file://"+video, "", nil))
		wantProblem(t, err, workersdk.TypeInvalidInput, "no audio stream")
	})
}

func TestDetectShots(t *testing.T) {
	t.Parallel() // the tools are separate processes: overlap their start-up and I/O
	dir := t.TempDir()
	clip := testmedia.Scenes(t, dir)
	for _, s := range stores(t) {
		t.Run(s.name, func(t *testing.T) {
			out, qty, err := run(t, ShotsProfile(s.res), workItem(DetectShots, s.input(t, clip, "scenes.mp4"), "", nil))
			if err != nil {
				t.Fatal(err)
			}
			shots := out.GetData().GetFields()[ParamShots].GetListValue().AsSlice()
			want := []float64{0, 1.2, 2.4, 3.6}
			t.Logf("cuts at 1.2 and 2.4, shots %v", shots)
			if len(shots) != 3 {
				t.Fatalf("shots = %v, want 3 (cuts at 1.2 and 2.4)", shots)
			}
			for i, sh := range shots {
				m := sh.(map[string]any)
				if math.Abs(m["start"].(float64)-want[i]) > 0.2 || math.Abs(m["end"].(float64)-want[i+1]) > 0.2 {
					t.Errorf("shot %d = %v, want %v-%v ± 0.2", i, m, want[i], want[i+1])
				}
			}
			if tc := shots[1].(map[string]any)["startTimecode"]; tc != "00:00:01.200" {
				t.Errorf("shot 1 startTimecode = %v, want 00:00:01.200", tc)
			}
			if math.Abs(qty-3.6) > 0.1 {
				t.Errorf("verified quantity = %v, want 3.6", qty)
			}
		})
	}
	t.Run("bad input", func(t *testing.T) {
		bad := badInputs(t, dir, clip)
		for name, p := range bad {
			_, _, err := run(t, ShotsProfile(&locator.Resolver{Roots: []string{dir}}), workItem(DetectShots, "file://"+p, "", nil))
			t.Log(name)
			wantProblem(t, err, workersdk.TypeInvalidInput, "inputFile")
		}
	})
}
