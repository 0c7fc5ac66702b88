package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/grpcx"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

type clientFlags struct {
	server string
	apiKey string
	output string
}

func (c *clientFlags) register(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&c.server, "server", envOr("MEDIUS_SERVER", "127.0.0.1:9090"), "mediator gRPC address (MEDIUS_SERVER)")
	// Read from the environment when used: as the flag's default, --help
	// would print the secret.
	f.StringVar(&c.apiKey, "api-key", "", "API key (default $MEDIUS_API_KEY)")
	f.StringVarP(&c.output, "output", "o", "table", "output: table or json")
}

func (c *clientFlags) dial(ctx context.Context) (jobsv1.JobServiceClient, context.Context, func(), error) {
	if c.apiKey == "" {
		c.apiKey = os.Getenv("MEDIUS_API_KEY")
	}
	if c.apiKey == "" {
		return nil, nil, nil, errors.New("no API key: pass --api-key or set MEDIUS_API_KEY")
	}
	cc, err := grpcx.Dial(c.server)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.apiKey)
	return jobsv1.NewJobServiceClient(cc), ctx, func() { cc.Close() }, nil
}

func newJobsCmd() *cobra.Command {
	var c clientFlags
	cmd := &cobra.Command{
		Use: "jobs", Short: "Submit, list, follow, cancel and restart jobs, and list their executions",
		// The output format is checked before anything is asked of the
		// mediator: a job submitted, canceled or restarted, then not shown
		// for a typo in -o, would leave the user without its id or state
		// (and with --wait, only after its whole run).
		PersistentPreRunE: func(*cobra.Command, []string) error { return checkOutput(c.output) },
	}
	c.register(cmd)
	// What -o json writes differs by command; scripts need to know which
	// shape to parse.
	cmd.PersistentFlags().Lookup("output").Usage = "output: table or json (json: each job one indented JSON object, " +
		"several one after another for list, not an array; executions: one JSON array; " +
		"submit-batch: one object per line of its file, {\"line\": N, \"job\"|\"error\": ...})"

	var profile, requestID, jobType string
	var inputs, params []string
	var wait bool
	submit := &cobra.Command{
		Use:     "submit",
		Short:   "Submit a job",
		Example: `  medius jobs submit --profile ExtractTechnicalMetadata --input inputFile=file://$PWD/clip.mp4 --wait`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			job := &jobsv1.Job{Profile: profile, JobType: jobType, Input: &jobsv1.JobInput{Locators: map[string]*jobsv1.Locator{}}}
			for _, in := range inputs {
				name, url, ok := strings.Cut(in, "=")
				if !ok {
					return fmt.Errorf("--input %q: want name=url", in)
				}
				job.Input.Locators[name] = &jobsv1.Locator{Url: url}
			}
			if len(params) > 0 {
				m := map[string]any{}
				for _, p := range params {
					k, v, ok := strings.Cut(p, "=")
					if !ok {
						return fmt.Errorf("--param %q: want name=value", p)
					}
					var jv any
					if json.Unmarshal([]byte(v), &jv) != nil {
						jv = v // not JSON: a plain string
					}
					m[k] = jv
				}
				st, err := structpb.NewStruct(m)
				if err != nil {
					return fmt.Errorf("--param: %w", err)
				}
				job.Input.Parameters = st
			}
			cl, ctx, closeFn, err := c.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer closeFn()
			got, err := cl.CreateJob(ctx, &jobsv1.CreateJobRequest{Job: job, RequestId: requestID})
			if err != nil {
				return err
			}
			return c.show(ctx, cmd, cl, got, wait, 0, endedBadly)
		},
	}
	submit.Flags().StringVar(&profile, "profile", "", "job profile (required)")
	submit.Flags().StringVar(&jobType, "job-type", "", "job type (default: the profile's)")
	submit.Flags().StringArrayVar(&inputs, "input", nil, "input locator name=url (repeatable)")
	submit.Flags().StringArrayVar(&params, "param", nil, "input parameter name=value, value JSON or text (repeatable)")
	submit.Flags().StringVar(&requestID, "request-id", "", "idempotency key")
	addWaitFlag(submit, &wait, "wait until the job ends, then show it")
	_ = submit.MarkFlagRequired("profile")

	get := &cobra.Command{
		Use: "get ID", Short: "Show a job", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, ctx, closeFn, err := c.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer closeFn()
			j, err := cl.GetJob(ctx, &jobsv1.GetJobRequest{Id: args[0]})
			if err != nil {
				return err
			}
			return printJobs(cmd.OutOrStdout(), c.output, j)
		},
	}
	waitCmd := &cobra.Command{
		Use: "wait ID", Short: "Wait until a job ends, then show it", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, ctx, closeFn, err := c.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer closeFn()
			return c.show(ctx, cmd, cl, &jobsv1.Job{Id: args[0]}, true, 0, endedBadly)
		},
	}
	// maxListCalls bounds the calls jobs list makes to fill one page.
	const maxListCalls = 20
	var pageSize int32
	var pageToken, status string
	list := &cobra.Command{
		Use: "list", Short: "List jobs, newest first", Args: cobra.NoArgs,
		Long: `List your jobs, newest first, a page at a time (--page-size). The token of the
next page, if any, is printed on stderr as "more: --page-token TOKEN", in table
and json output alike, so stdout holds only the jobs.

With -o json each job is written as its own indented JSON object, one after
another: a stream of objects, neither a JSON array nor one object per line.
jq reads it as is (medius jobs list -o json | jq -r .id); jq -s makes it an array.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &jobsv1.ListJobsRequest{PageSize: pageSize, PageToken: pageToken, Profile: profile}
			if status != "" {
				s, ok := jobstate.FromMCMA(status)
				if !ok {
					return fmt.Errorf("--status %q: want one of NEW, QUEUED, SCHEDULED, RUNNING, COMPLETED, FAILED, CANCELED", status)
				}
				req.Status = s
			}
			cl, ctx, closeFn, err := c.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer closeFn()
			// A call looks at a bounded number of jobs, so a filter
			// matching few may answer a short page with a token: fill
			// the page from the calls after it, a bounded number of them.
			var jobs []*jobsv1.Job
			var resp *jobsv1.ListJobsResponse
			for calls := 0; ; calls++ {
				if resp, err = cl.ListJobs(ctx, req); err != nil {
					return err
				}
				jobs = append(jobs, resp.Jobs...)
				if resp.NextPageToken == "" || int32(len(jobs)) >= pageSize || calls == maxListCalls-1 {
					break
				}
				req.PageToken = resp.NextPageToken
				req.PageSize = pageSize - int32(len(jobs))
			}
			if err := printJobs(cmd.OutOrStdout(), c.output, jobs...); err != nil {
				return err
			}
			// On stderr even with -o json: stdout stays pure JSON, and a
			// script can still reach the pages after the first.
			if resp.NextPageToken != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "more: --page-token %s\n", resp.NextPageToken)
			}
			return nil
		},
	}
	list.Flags().Int32Var(&pageSize, "page-size", 50, "jobs per page")
	list.Flags().StringVar(&pageToken, "page-token", "", "page token from a previous list")
	list.Flags().StringVar(&status, "status", "", "only jobs in this status")
	list.Flags().StringVar(&profile, "profile", "", "only jobs of this profile")
	// cancel only asks: the job is printed as it was when asked, and the
	// processor ends it CANCELED soon after, unless it ends otherwise first.
	// --wait shows which, and its exit status says whether the cancel did
	// what was asked: 0 for CANCELED (a script under set -e goes on), 1 if
	// the job COMPLETED or FAILED before the cancel took effect.
	var cancelWait bool
	cancel := &cobra.Command{
		Use: "cancel ID", Short: "Cancel a job", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, ctx, closeFn, err := c.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer closeFn()
			j, err := cl.CancelJob(ctx, &jobsv1.CancelJobRequest{Id: args[0]})
			if err != nil {
				return err
			}
			return c.show(ctx, cmd, cl, j, cancelWait, 0, canceledTooLate)
		},
	}
	cancel.Flags().BoolVar(&cancelWait, "wait", false, "wait until the job has ended, then show it; "+
		"exit status 0 if it ended CANCELED, 1 if it ended COMPLETED or FAILED before the cancel took effect")
	// restart prints the job as the mediator left it (QUEUED), or with
	// --wait as its new run ended. Whether a job may run again (FAILED or
	// CANCELED, its deadline not passed) is the mediator's to say: its
	// refusal, FailedPrecondition, is returned as is, so main prints the
	// reason and exits 1.
	var restartWait bool
	restart := &cobra.Command{
		Use: "restart ID", Short: "Run a FAILED or CANCELED job again as a new attempt", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, ctx, closeFn, err := c.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer closeFn()
			j, err := cl.RestartJob(ctx, &jobsv1.RestartJobRequest{Id: args[0]})
			if err != nil {
				return err
			}
			return c.show(ctx, cmd, cl, j, restartWait, jobstate.LatestAttempt(j), endedBadly)
		},
	}
	addWaitFlag(restart, &restartWait, "wait until the restarted run ends, then show the job")
	// executions shows each attempt of a job (a restart adds one), so a user
	// can see where and why every run ended, not only the last.
	executions := &cobra.Command{
		Use: "executions ID", Short: "List a job's executions, one per attempt, oldest first", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, ctx, closeFn, err := c.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer closeFn()
			resp, err := cl.ListJobExecutions(ctx, &jobsv1.ListJobExecutionsRequest{Id: args[0]})
			if err != nil {
				return err
			}
			if c.output == "json" {
				return printJSONList(cmd.OutOrStdout(), resp.GetExecutions())
			}
			return printExecutions(cmd.OutOrStdout(), resp.GetExecutions())
		},
	}
	cmd.AddCommand(submit, newSubmitBatchCmd(&c), get, waitCmd, list, cancel, restart, executions, newWatchCmd(&c))
	return cmd
}

// addWaitFlag gives cmd the --wait of the commands that wait for a job to
// run (submit, restart), with the exit status they share spelled out.
// cancel's --wait waits for the job to stop, so succeeds on CANCELED.
func addWaitFlag(cmd *cobra.Command, wait *bool, what string) {
	cmd.Flags().BoolVar(wait, "wait", false, what+"; exit status 0 only if it ended COMPLETED, 1 if FAILED or CANCELED")
}

// show prints job, or with wait first waits until it ends (see waitJob for
// since), prints it as it ended, and returns verdict's judgment of that end
// as the command's error: endedBadly for the commands that wait for a run
// (submit, wait, restart), canceledTooLate for cancel.
func (c *clientFlags) show(ctx context.Context, cmd *cobra.Command, cl jobsv1.JobServiceClient, job *jobsv1.Job, wait bool, since int32,
	verdict func(*jobsv1.Job) error) error {
	if !wait {
		return printJobs(cmd.OutOrStdout(), c.output, job)
	}
	j, err := waitJob(ctx, cl, job.GetId(), since, cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	if err := printJobs(cmd.OutOrStdout(), c.output, j); err != nil {
		return err
	}
	return verdict(j)
}

// waitJob polls until the job is terminal. A terminal record that does not
// know attempt since yet is not the end waited for: after a restart (since
// is its attempt) a read of the job from before it, which a replica behind
// the write may still serve, shows the run before it ended. A record only
// gains executions, so the new run's end always knows its attempt.
// (A later version follows the WatchJob stream instead.)
func waitJob(ctx context.Context, cl jobsv1.JobServiceClient, id string, since int32, progress io.Writer) (*jobsv1.Job, error) {
	last := ""
	for {
		j, err := cl.GetJob(ctx, &jobsv1.GetJobRequest{Id: id}, grpc.WaitForReady(true))
		if err != nil {
			return nil, err
		}
		current := jobstate.LatestAttempt(j) >= since
		line := fmt.Sprintf("%s %d%%", jobstate.Name(j.Status), j.Progress)
		if line != last && current {
			fmt.Fprintf(progress, "%s %s\n", id, line)
			last = line
		}
		if jobstate.IsTerminal(j.Status) && current {
			return j, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// endedBadly makes a waited-for job that did not complete an error, so
// scripts can test the exit status.
func endedBadly(j *jobsv1.Job) error {
	if j.Status == jobsv1.JobStatus_JOB_STATUS_COMPLETED {
		return nil
	}
	return fmt.Errorf("job %s ended %s", j.Id, jobstate.Name(j.Status))
}

// canceledTooLate makes a waited-for cancel that did not end the job
// CANCELED an error: the job completed or failed first, and a script that
// meant to stop it (its output unwanted, its work undone) must hear so.
func canceledTooLate(j *jobsv1.Job) error {
	if j.Status == jobsv1.JobStatus_JOB_STATUS_CANCELED {
		return nil
	}
	return fmt.Errorf("job %s ended %s before the cancel took effect", j.Id, jobstate.Name(j.Status))
}

func printJobs(w io.Writer, format string, jobs ...*jobsv1.Job) error {
	switch format {
	case "json":
		m := protojson.MarshalOptions{Multiline: true, Indent: "  "}
		for _, j := range jobs {
			b, err := m.Marshal(j)
			if err != nil {
				return err
			}
			fmt.Fprintln(w, string(b))
		}
		return nil
	case "table", "":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tPROFILE\tSTATUS\tPROGRESS\tCREATED\tMESSAGE")
		for _, j := range jobs {
			msg := j.StatusMessage
			if j.Error != nil {
				msg = j.Error.Detail
			}
			msg = oneLine(msg)
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d%%\t%s\t%s\n", j.Id, j.Profile, jobstate.Name(j.Status), j.Progress,
				j.CreateTime.AsTime().Local().Format(time.DateTime), msg)
		}
		return tw.Flush()
	default:
		return fmt.Errorf("--output %q: want table or json", format)
	}
}

// printExecutions writes one table row per attempt. A time not reached
// (not yet started, still running) is "-"; an error is its short type and
// detail ("tool-failed: ffprobe failed: ...").
func printExecutions(w io.Writer, execs []*jobsv1.Execution) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ATTEMPT\tSERVICE\tINSTANCE\tSTATUS\tDISPATCHED\tSTARTED\tENDED\tERROR")
	for _, e := range execs {
		msg := "-"
		if p := e.GetError(); p != nil {
			msg = strings.TrimPrefix(p.GetType(), problem.TypePrefix)
			if d := p.GetDetail(); d != "" {
				msg += ": " + d
			}
			msg = oneLine(msg)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.GetAttempt(), orDash(e.GetService()), orDash(e.GetInstanceId()),
			jobstate.Name(e.GetStatus()), timeOrDash(e.GetDispatchTime()), timeOrDash(e.GetStartTime()), timeOrDash(e.GetEndTime()), msg)
	}
	return tw.Flush()
}

// oneLine makes text fit a table cell: a tool's error detail often ends in
// a newline or holds several lines, which would break the row and, through
// tabwriter, the alignment of the rows after it.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func timeOrDash(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().Local().Format(time.DateTime)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
