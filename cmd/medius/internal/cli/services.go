package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/grpcx"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// The registry is internal to a Medius deployment: these commands reach it
// through the mediator (the same --server and credential as `medius jobs`),
// which lets any tenant read and the admin credential write.

func (c *clientFlags) dialRegistry(ctx context.Context) (registryv1.RegistryServiceClient, context.Context, func(), error) {
	if c.apiKey == "" {
		c.apiKey = os.Getenv("MEDIUS_API_KEY")
	}
	if c.apiKey == "" {
		// An operator holding only the admin credential reads with it
		// (and sees what only the admin may, such as addresses).
		c.apiKey = os.Getenv("MEDIUS_ADMIN_API_KEY")
	}
	if c.apiKey == "" {
		return nil, nil, nil, errors.New("no API key: pass --api-key or set MEDIUS_API_KEY (or MEDIUS_ADMIN_API_KEY)")
	}
	cc, err := grpcx.Dial(c.server)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.apiKey)
	return registryv1.NewRegistryServiceClient(cc), ctx, func() { cc.Close() }, nil
}

// preferAdmin makes a registry write use the admin credential from
// MEDIUS_ADMIN_API_KEY when --api-key was not given, the same variable
// `medius tenants` reads, so an operator need not juggle two variables.
func (c *clientFlags) preferAdmin(cmd *cobra.Command) {
	if cmd.Flags().Changed("api-key") {
		return
	}
	if k := os.Getenv("MEDIUS_ADMIN_API_KEY"); k != "" {
		c.apiKey = k
	}
}

// allPages follows page tokens until the last page and returns every item.
func allPages[T any](page func(token string) (items []T, next string, err error)) ([]T, error) {
	var all []T
	token := ""
	for {
		items, next, err := page(token)
		if err != nil {
			return nil, err
		}
		all = append(all, items...)
		if next == "" {
			return all, nil
		}
		token = next
	}
}

// printJSONList writes items as one JSON array (protojson field names).
func printJSONList[T proto.Message](w io.Writer, items []T) error {
	m := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: true}
	parts := make([]string, 0, len(items))
	for _, it := range items {
		b, err := m.Marshal(it)
		if err != nil {
			return err
		}
		parts = append(parts, string(b))
	}
	_, err := fmt.Fprintf(w, "[%s]\n", strings.Join(parts, ",\n"))
	return err
}

func checkOutput(format string) error {
	if format != "table" && format != "json" && format != "" {
		return fmt.Errorf("--output %q: want table or json", format)
	}
	return nil
}

func joinOr(list []string) string {
	if len(list) == 0 {
		return "-"
	}
	return strings.Join(list, ",")
}

func newServicesCmd() *cobra.Command {
	var c clientFlags
	cmd := &cobra.Command{Use: "services", Short: "Show the services that run jobs"}
	c.register(cmd)
	var profile, jobType, region string
	list := &cobra.Command{
		Use: "list", Short: "List services", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(c.output); err != nil {
				return err
			}
			cl, ctx, closeFn, err := c.dialRegistry(cmd.Context())
			if err != nil {
				return err
			}
			defer closeFn()
			all, err := allPages(func(token string) ([]*registryv1.Service, string, error) {
				resp, err := cl.ListServices(ctx, &registryv1.ListServicesRequest{Profile: profile, JobType: jobType, Region: region, PageSize: 1000, PageToken: token})
				return resp.GetServices(), resp.GetNextPageToken(), err
			})
			if err != nil {
				return err
			}
			if c.output == "json" {
				return printJSONList(cmd.OutOrStdout(), all)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tJOB TYPES\tPROFILES\tREGIONS\tCOST/UNIT\tCAPACITY")
			for _, s := range all {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%g\t%d\n", s.GetName(), joinOr(s.GetJobTypes()), joinOr(s.GetProfiles()),
					joinOr(s.GetRegions()), s.GetCostPerUnit(), s.GetDefaultCapacity())
			}
			return tw.Flush()
		},
	}
	list.Flags().StringVar(&profile, "profile", "", "only services offering this profile")
	list.Flags().StringVar(&jobType, "job-type", "", "only services accepting this job type")
	list.Flags().StringVar(&region, "region", "", "only services serving this region")
	cmd.AddCommand(list)
	return cmd
}
