// Package cli holds the medius commands.
package cli

import (
	"github.com/spf13/cobra"
)

// New returns the root command.
func New() *cobra.Command {
	root := &cobra.Command{
		Use:           "medius",
		Short:         "Medius: long-running media jobs, self-hosted",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newDevCmd(), newJobsCmd(), newTenantsCmd(), newKeysCmd(), newUsageCmd(), newServicesCmd(), newInstancesCmd(), newProfilesCmd())
	return root
}
