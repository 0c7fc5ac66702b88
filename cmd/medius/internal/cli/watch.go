package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/spf13/cobra"
)

// newWatchCmd is `medius jobs watch ID`: a live progress bar fed by the
// WatchJob stream, ending with the job's final state.
func newWatchCmd(c *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "watch ID",
		Short: "Follow a job live with a progress bar until it ends",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, ctx, closeFn, err := c.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer closeFn()
			stream, err := cl.WatchJob(ctx, &jobsv1.WatchJobRequest{Id: args[0]})
			if err != nil {
				return err
			}
			out := cmd.ErrOrStderr()
			var last *jobsv1.Job
			for {
				j, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					if last != nil {
						fmt.Fprintln(out)
					}
					return err
				}
				last = j
				fmt.Fprintf(out, "\r%s", progressBar(j, 30))
			}
			if last == nil {
				return fmt.Errorf("job %s: the stream ended without news", args[0])
			}
			fmt.Fprintln(out)
			if err := printJobs(cmd.OutOrStdout(), c.output, last); err != nil {
				return err
			}
			return endedBadly(last)
		},
	}
}

// progressBar renders "[#######-------]  42% RUNNING message" at width
// characters of bar, padded so a shorter line overwrites a longer one.
func progressBar(j *jobsv1.Job, width int) string {
	p := int(min(max(j.GetProgress(), 0), 100))
	if j.GetStatus() == jobsv1.JobStatus_JOB_STATUS_COMPLETED {
		p = 100
	}
	done := p * width / 100
	line := fmt.Sprintf("[%s%s] %3d%% %-9s %s", strings.Repeat("#", done), strings.Repeat("-", width-done), p,
		jobstate.Name(j.GetStatus()), j.GetStatusMessage())
	if len(line) > 100 {
		line = line[:100]
	}
	return fmt.Sprintf("%-100s", line)
}
