package cli

import (
	"fmt"
	"slices"
	"text/tabwriter"
	"time"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/spf13/cobra"
)

func newInstancesCmd() *cobra.Command {
	var c clientFlags
	cmd := &cobra.Command{Use: "instances", Short: "Show the live worker instances"}
	c.register(cmd)
	var service, profile, region string
	list := &cobra.Command{
		Use: "list", Short: "List live instances (those whose lease is alive)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(c.output); err != nil {
				return err
			}
			cl, ctx, closeFn, err := c.dialRegistry(cmd.Context())
			if err != nil {
				return err
			}
			defer closeFn()
			all, err := allPages(func(token string) ([]*registryv1.ServiceInstance, string, error) {
				resp, err := cl.ListInstances(ctx, &registryv1.ListInstancesRequest{Service: service, Profile: profile, Region: region, PageSize: 1000, PageToken: token})
				return resp.GetInstances(), resp.GetNextPageToken(), err
			})
			if err != nil {
				return err
			}
			if c.output == "json" {
				return printJSONList(cmd.OutOrStdout(), all)
			}
			// Addresses reach the admin only; a tenant's table has no
			// column of dashes for them.
			withAddr := slices.ContainsFunc(all, func(in *registryv1.ServiceInstance) bool { return in.GetAddress() != "" })
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			head := "ID\tSERVICE\tVERSION\tLOAD\tREGIONS\tSTARTED\tLAST HEARTBEAT"
			if withAddr {
				head += "\tADDRESS"
			}
			fmt.Fprintln(tw, head)
			now := time.Now()
			for _, in := range all {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\t%s\t%s ago", in.GetId(), in.GetService(), orDash(in.GetVersion()),
					in.GetInFlight(), in.GetCapacity(), joinOr(in.GetRegions()),
					in.GetStartTime().AsTime().Local().Format(time.DateTime),
					now.Sub(in.GetLastHeartbeatTime().AsTime()).Round(time.Second))
				if withAddr {
					fmt.Fprintf(tw, "\t%s", orDash(in.GetAddress()))
				}
				fmt.Fprintln(tw)
			}
			return tw.Flush()
		},
	}
	list.Flags().StringVar(&service, "service", "", "only instances of this service")
	list.Flags().StringVar(&profile, "profile", "", "only instances offering this profile")
	list.Flags().StringVar(&region, "region", "", "only instances serving this region")
	cmd.AddCommand(list)
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
