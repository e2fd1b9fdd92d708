package cli

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/spf13/cobra"

	wasmev1 "wasme.io/wasme/api/v1"
)

// FilterStatus is what `wasme status -o json|yaml` prints for one FilterDeployment: its status,
// arranged per workload and pod, read from the object as the operator wrote it.
type FilterStatus struct {
	Namespace    string `json:"namespace"`
	Name         string `json:"name"`
	Image        string `json:"image"`
	ImageDigest  string `json:"imageDigest,omitempty"`
	ModuleDigest string `json:"moduleDigest,omitempty"`
	Delivery     string `json:"delivery,omitempty"`
	// Current is false while the operator has not handled the latest generation.
	Current    bool            `json:"current"`
	Ready      ConditionStatus `json:"ready"`
	Programmed ConditionStatus `json:"programmed"`
	// Proxies is "<programmed>/<pods>" over every workload.
	Proxies string `json:"proxies,omitempty"`
	// CachedNodes of CacheNodes node caches hold the module.
	CachedNodes int32            `json:"cachedNodes"`
	CacheNodes  int32            `json:"cacheNodes"`
	Workloads   []WorkloadStatus `json:"workloads"`
}

// ConditionStatus is one condition, "Unknown" with no reason when absent.
type ConditionStatus struct {
	Status  string `json:"status"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

// WorkloadStatus is one selected workload.
type WorkloadStatus struct {
	Name    string `json:"name"`
	State   string `json:"state"`
	Reason  string `json:"reason,omitempty"`
	Proxies string `json:"proxies,omitempty"`
	// Pods are the pods whose proxy does not run the filter (the operator lists at most 20).
	Pods []wasmev1.PodProxyStatus `json:"pods,omitempty"`
}

func filterStatusOf(fd *wasmev1.FilterDeployment) FilterStatus {
	cond := func(t string) ConditionStatus {
		c := apimeta.FindStatusCondition(fd.Status.Conditions, t)
		if c == nil {
			return ConditionStatus{Status: "Unknown"}
		}
		return ConditionStatus{Status: string(c.Status), Reason: c.Reason, Message: c.Message}
	}
	st := &fd.Status
	out := FilterStatus{
		Namespace: fd.Namespace, Name: fd.Name, Image: fd.Spec.Filter.Image,
		ImageDigest: st.ImageDigest, ModuleDigest: st.ModuleDigest, Delivery: string(st.Delivery),
		Current: st.ObservedGeneration == fd.Generation,
		Ready:   cond(wasmev1.ReadyCondition), Programmed: cond(wasmev1.ProgrammedCondition),
		Proxies: st.ProxiesProgrammed, CachedNodes: st.CachedNodes, CacheNodes: st.CacheNodes,
		Workloads: []WorkloadStatus{},
	}
	for name, w := range st.Workloads {
		out.Workloads = append(out.Workloads, WorkloadStatus{Name: name, State: string(w.State), Reason: w.Reason,
			Proxies: w.Proxies, Pods: w.NotProgrammed})
	}
	slices.SortFunc(out.Workloads, func(a, b WorkloadStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func newStatusCmd(s streams) *cobra.Command {
	var (
		kubeconfig, namespace string
		all                   bool
		out                   outputFlag
	)
	cmd := &cobra.Command{
		Use:   "status [FILTERDEPLOYMENT]",
		Short: "Show where deployed filters stand: per workload, which pods' proxies run them (istiod's ACK/NACK state)",
		Long: `Show FilterDeployments as the operator reports them: the image and module digests, the
delivery, the node caches holding the module, Ready (what the operator wrote) and Programmed
(what the proxies run, from istiod's per-proxy ACK/NACK state), and per workload its proxies
(programmed/pods) and the pods whose proxy does not run the filter, with why: the proxy's NACK
message, not connected to istiod, or not ACKed yet (docs/status.md).`,
		Example: `  wasme status -n bookinfo
  wasme status bookinfo-custom-filter -n bookinfo -o yaml
  wasme status -A`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if all && len(args) > 0 {
				return fmt.Errorf("--all-namespaces lists every FilterDeployment; name one with -n instead")
			}
			c, err := kubeClient(kubeconfig)
			if err != nil {
				return err
			}
			var fds []wasmev1.FilterDeployment
			if len(args) == 1 {
				fd := &wasmev1.FilterDeployment{}
				if err := c.Get(cmd.Context(), client.ObjectKey{Namespace: namespace, Name: args[0]}, fd); err != nil {
					return fmt.Errorf("reading filterdeployment %s/%s: %w", namespace, args[0], notInstalled(err))
				}
				fds = append(fds, *fd)
			} else {
				var list wasmev1.FilterDeploymentList
				var opts []client.ListOption
				if !all {
					opts = append(opts, client.InNamespace(namespace))
				}
				if err := c.List(cmd.Context(), &list, opts...); err != nil {
					return fmt.Errorf("listing filterdeployments: %w", notInstalled(err))
				}
				fds = list.Items
			}
			views := make([]FilterStatus, 0, len(fds))
			for i := range fds {
				views = append(views, filterStatusOf(&fds[i]))
			}
			slices.SortFunc(views, func(a, b FilterStatus) int {
				return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
			})
			return out.print(s.out, views, func() error {
				if len(views) == 0 {
					where := "namespace " + namespace
					if all {
						where = "any namespace"
					}
					_, err := fmt.Fprintf(s.out, "no FilterDeployments in %s\n", where)
					return err
				}
				for i, v := range views {
					if i > 0 {
						fmt.Fprintln(s.out)
					}
					if err := printStatusTable(s.out, v); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file; default $KUBECONFIG or ~/.kube/config")
	f.StringVarP(&namespace, "namespace", "n", "default", "namespace of the FilterDeployments")
	f.BoolVarP(&all, "all-namespaces", "A", false, "FilterDeployments of every namespace")
	out.bind(cmd)
	return cmd
}

// notInstalled says so when the FilterDeployment API is missing.
func notInstalled(err error) error {
	if apimeta.IsNoMatchError(err) {
		return fmt.Errorf("the FilterDeployment API is not installed: kubectl apply -f deploy/crds.yaml")
	}
	return err
}

// printStatusTable prints one FilterDeployment: a header block, then one row per workload and
// one indented row per pod whose proxy does not run the filter.
func printStatusTable(w io.Writer, v FilterStatus) error {
	cond := func(c ConditionStatus) string {
		if c.Reason == "" {
			return c.Status
		}
		return c.Status + " (" + c.Reason + ")"
	}
	short := func(d string) string {
		if d == "" {
			return "-"
		}
		if len(d) > len("sha256:")+12 {
			return d[:len("sha256:")+12]
		}
		return d
	}
	stale := ""
	if !v.Current {
		stale = " (the operator has not handled the latest spec yet)"
	}
	fmt.Fprintf(w, "%s/%s%s\n", v.Namespace, v.Name, stale)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  image:\t%s\n", v.Image)
	fmt.Fprintf(tw, "  digests:\timage %s, module %s\n", short(v.ImageDigest), short(v.ModuleDigest))
	fmt.Fprintf(tw, "  delivery:\t%s\n", orDash(v.Delivery, "-"))
	fmt.Fprintf(tw, "  node caches:\t%d/%d hold the module\n", v.CachedNodes, v.CacheNodes)
	fmt.Fprintf(tw, "  ready:\t%s\n", cond(v.Ready))
	fmt.Fprintf(tw, "  programmed:\t%s, proxies %s\n", cond(v.Programmed), orDash(v.Proxies, "-"))
	if err := tw.Flush(); err != nil {
		return err
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  WORKLOAD\tSTATE\tPROXIES\tPOD\tPROXY\tMESSAGE")
	for _, wl := range v.Workloads {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t\t\t%s\n", wl.Name, wl.State, orDash(wl.Proxies, "-"), strings.ReplaceAll(oneLine(wl.Reason), "\t", " "))
		for _, p := range wl.Pods {
			fmt.Fprintf(tw, "  \t\t\t%s\t%s\t%s\n", p.Pod, p.State, strings.ReplaceAll(oneLine(p.Message), "\t", " "))
		}
	}
	return tw.Flush()
}

func orDash(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
