package cli

import (
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

// maxProfileFile bounds what `profiles apply` reads: a profile is a few
// hundred bytes.
const maxProfileFile = 1 << 20

func newProfilesCmd() *cobra.Command {
	var c clientFlags
	cmd := &cobra.Command{Use: "profiles", Short: "List, show, apply and delete job profiles"}
	c.register(cmd)

	var jobType, region string
	list := &cobra.Command{
		Use: "list", Short: "List job profiles", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(c.output); err != nil {
				return err
			}
			cl, ctx, closeFn, err := c.dialRegistry(cmd.Context())
			if err != nil {
				return err
			}
			defer closeFn()
			all, err := allPages(func(token string) ([]*registryv1.JobProfile, string, error) {
				resp, err := cl.ListJobProfiles(ctx, &registryv1.ListJobProfilesRequest{JobType: jobType, Region: region, PageSize: 1000, PageToken: token})
				return resp.GetProfiles(), resp.GetNextPageToken(), err
			})
			if err != nil {
				return err
			}
			return printProfiles(cmd.OutOrStdout(), c.output, all)
		},
	}
	list.Flags().StringVar(&jobType, "job-type", "", "only profiles of this job type")
	list.Flags().StringVar(&region, "region", "", "only profiles offered in this region")

	get := &cobra.Command{
		Use: "get NAME", Short: "Show a job profile", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(c.output); err != nil {
				return err
			}
			cl, ctx, closeFn, err := c.dialRegistry(cmd.Context())
			if err != nil {
				return err
			}
			defer closeFn()
			p, err := cl.GetJobProfile(ctx, &registryv1.GetJobProfileRequest{Name: args[0]})
			if err != nil {
				return err
			}
			if c.output == "json" {
				return printProfileJSON(cmd.OutOrStdout(), p)
			}
			return describeProfile(cmd.OutOrStdout(), p)
		},
	}

	var file string
	apply := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Create or replace a job profile from a YAML or JSON file (admin)",
		Example: `  cat > thumb.yaml <<EOF
  name: ExtractThumbnail
  jobType: TransformJob
  description: A JPEG thumbnail of the first frame
  inputParameters:
    - {name: inputFile, type: locator}
  optionalInputParameters:
    - {name: width, type: integer}
  outputParameters:
    - {name: outputFile, type: locator}
  defaultTimeout: 300s
  maxAttempts: 3
  EOF
  medius profiles apply -f thumb.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(c.output); err != nil {
				return err
			}
			p, err := readProfile(cmd.InOrStdin(), file)
			if err != nil {
				return err
			}
			c.preferAdmin(cmd)
			cl, ctx, closeFn, err := c.dialRegistry(cmd.Context())
			if err != nil {
				return err
			}
			defer closeFn()
			got, err := cl.PutJobProfile(ctx, &registryv1.PutJobProfileRequest{Profile: p})
			if err != nil {
				return err
			}
			if c.output == "json" {
				return printProfileJSON(cmd.OutOrStdout(), got)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "job profile %s applied\n", got.GetName())
			return err
		},
	}
	apply.Flags().StringVarP(&file, "file", "f", "", "profile file, YAML or JSON (- for stdin)")
	_ = apply.MarkFlagRequired("file")

	del := &cobra.Command{
		Use: "delete NAME", Short: "Delete a job profile (admin)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c.preferAdmin(cmd)
			cl, ctx, closeFn, err := c.dialRegistry(cmd.Context())
			if err != nil {
				return err
			}
			defer closeFn()
			if _, err := cl.DeleteJobProfile(ctx, &registryv1.DeleteJobProfileRequest{Name: args[0]}); err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "job profile %s deleted\n", args[0])
			return err
		},
	}
	cmd.AddCommand(list, get, apply, del)
	return cmd
}

// readProfile parses a profile file: YAML (or JSON, which is YAML) with the
// fields of medius.registry.v1.JobProfile in camelCase or snake_case.
// Misspelt fields are refused rather than silently dropped.
func readProfile(stdin io.Reader, file string) (*registryv1.JobProfile, error) {
	var r io.Reader = stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("read profile: %w", err)
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, maxProfileFile+1))
	if err != nil {
		return nil, fmt.Errorf("read profile %s: %w", file, err)
	}
	if len(data) > maxProfileFile {
		return nil, fmt.Errorf("read profile %s: larger than %d bytes", file, maxProfileFile)
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("profile %s is not valid YAML: %w", file, err)
	}
	p := new(registryv1.JobProfile)
	if err := protojson.Unmarshal(js, p); err != nil {
		return nil, fmt.Errorf("profile %s: %w", file, err)
	}
	return p, nil
}

func printProfileJSON(w io.Writer, p *registryv1.JobProfile) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: true}.Marshal(p)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

func printProfiles(w io.Writer, format string, ps []*registryv1.JobProfile) error {
	if format == "json" {
		return printJSONList(w, ps)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tJOB TYPE\tINPUTS\tOUTPUTS\tTIMEOUT\tATTEMPTS\tDESCRIPTION")
	for _, p := range ps {
		timeout := "-"
		if t := p.GetDefaultTimeout(); t != nil {
			timeout = t.AsDuration().String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", p.GetName(), p.GetJobType(), paramList(p.GetInputParameters(), p.GetOptionalInputParameters()),
			paramList(p.GetOutputParameters(), nil), timeout, p.GetMaxAttempts(), p.GetDescription())
	}
	return tw.Flush()
}

func paramList(req, opt []*registryv1.ParameterSpec) string {
	var out []string
	for _, s := range req {
		out = append(out, s.GetName()+":"+s.GetType())
	}
	for _, s := range opt {
		out = append(out, "["+s.GetName()+":"+s.GetType()+"]")
	}
	return joinOr(out)
}

func describeProfile(w io.Writer, p *registryv1.JobProfile) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Name:\t%s\n", p.GetName())
	fmt.Fprintf(tw, "Job type:\t%s\n", p.GetJobType())
	fmt.Fprintf(tw, "Description:\t%s\n", orDash(p.GetDescription()))
	section := func(title string, specs []*registryv1.ParameterSpec) {
		fmt.Fprintf(tw, "%s:\t", title)
		if len(specs) == 0 {
			fmt.Fprintln(tw, "-")
			return
		}
		for i, s := range specs {
			if i > 0 {
				fmt.Fprint(tw, "\t")
			}
			fmt.Fprintf(tw, "%s (%s)\n", s.GetName(), s.GetType())
		}
	}
	section("Inputs", p.GetInputParameters())
	section("Optional inputs", p.GetOptionalInputParameters())
	section("Outputs", p.GetOutputParameters())
	timeout := "-"
	if t := p.GetDefaultTimeout(); t != nil {
		timeout = t.AsDuration().String()
	}
	fmt.Fprintf(tw, "Default timeout:\t%s\n", timeout)
	fmt.Fprintf(tw, "Max attempts:\t%d\n", p.GetMaxAttempts())
	return tw.Flush()
}
