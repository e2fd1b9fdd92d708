package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/spf13/cobra"

	wasmev1 "wasme.io/wasme/api/v1"
	wasmeac "wasme.io/wasme/api/v1/applyconfiguration/api/v1"
	"wasme.io/wasme/internal/kube"
)

// deploy and undeploy drive the operator's engine through a FilterDeployment named after the
// filter id, so an imperative deploy gets the same validation, status, cleanup and ownership
// as a declarative one, and `kubectl get fd` shows it.

// cliFieldManager owns the FilterDeployments the CLI applies.
const cliFieldManager = "wasme-cli"

type deployOptions struct {
	kubeconfig     string
	namespace      string
	id             string
	labels         map[string]string
	workloadType   string
	patchContext   string
	istioNamespace string
	config         string
	rootID         string
	pullSecret     string
	plainHTTP      bool
	dryRun         bool
	wait           time.Duration
	out            outputFlag
}

func (o *deployOptions) selectionFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; default $KUBECONFIG or ~/.kube/config")
	f.StringVarP(&o.namespace, "namespace", "n", "default", "namespace of the workloads (and of the FilterDeployment)")
	f.StringVar(&o.id, "id", "", "filter id: names the FilterDeployment, the Envoy plugin and the EnvoyFilters (required)")
	f.BoolVar(&o.dryRun, "dry-run", false, "have the API server check the FilterDeployment and change nothing")
	f.DurationVar(&o.wait, "wait", 2*time.Minute, "how long to wait for the operator (0: do not wait)")
}

func newDeployCmd(s streams) *cobra.Command {
	cmd := &cobra.Command{Use: "deploy", Short: "Deploy a filter to a mesh"}
	cmd.AddCommand(newDeployIstioCmd(s))
	return cmd
}

func newUndeployCmd(s streams) *cobra.Command {
	cmd := &cobra.Command{Use: "undeploy", Short: "Remove a deployed filter from a mesh"}
	cmd.AddCommand(newUndeployIstioCmd(s))
	return cmd
}

func newDeployIstioCmd(s streams) *cobra.Command {
	o := &deployOptions{}
	cmd := &cobra.Command{
		Use:   "istio IMAGE --id ID",
		Short: "Deploy a filter image to the Istio sidecars of selected workloads",
		Long: `Deploy a filter image to the Istio sidecars of the selected workloads. The command applies a
FilterDeployment named after --id, which the wasme operator (deploy/wasme.yaml) carries out,
and waits until it is Ready: the module is on every node, the workloads are patched and each
has its EnvoyFilter.`,
		Example: `  wasme deploy istio registry.example.com/filters/custom-header:v0.1 --id custom-header -n bookinfo
  wasme deploy istio registry.example.com/filters/custom-header:v0.1 --id hdr -n bookinfo \
    -l app=details --config '{"name":"x-a","value":"b"}' --patch-context outbound
  wasme deploy istio registry.example.com/filters/custom-header:v0.1 --id hdr --dry-run -o yaml`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			fd, err := o.filterDeployment(args[0])
			if err != nil {
				return err
			}
			c, err := kubeClient(o.kubeconfig)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			opts := []client.ApplyOption{client.FieldOwner(cliFieldManager), client.ForceOwnership}
			if o.dryRun {
				opts = append(opts, client.DryRunAll)
			}
			if err := applyFD(ctx, c, fd, opts...); err != nil {
				return err
			}
			// With -o json|yaml stdout holds only the object, as the server has it at the end.
			progress := s.out
			if o.out.data() {
				progress = io.Discard
			}
			if o.dryRun {
				fmt.Fprintf(progress, "filterdeployment %s/%s checked by the API server (dry run)\n", fd.Namespace, fd.Name)
			} else {
				fmt.Fprintf(progress, "filterdeployment %s/%s applied\n", fd.Namespace, fd.Name)
				if o.wait > 0 {
					if err := waitReady(ctx, c, fd, o.wait, progress); err != nil {
						return err
					}
				}
			}
			// The typed client's reads leave the kind empty; a printed object says what it is.
			fd.TypeMeta = metav1.TypeMeta{APIVersion: wasmev1.GroupVersion.String(), Kind: "FilterDeployment"}
			fd.ManagedFields = nil
			return o.out.print(s.out, fd, func() error { return printFDTable(s.out, fd) })
		},
	}
	o.selectionFlags(cmd)
	o.out.bind(cmd)
	f := cmd.Flags()
	f.StringToStringVarP(&o.labels, "labels", "l", nil, "select workloads with these labels (k=v,...); default: all of the kind")
	f.StringVarP(&o.workloadType, "workload-type", "t", "deployment", "deployment, daemonset or statefulset")
	f.StringVar(&o.patchContext, "patch-context", "inbound", "inbound, outbound, gateway or any")
	f.StringVar(&o.istioNamespace, "istio-namespace", "istio-system", "namespace of istiod")
	f.StringVar(&o.config, "config", "", "configuration passed to the filter (a string)")
	f.StringVar(&o.rootID, "root-id", "", "root id; default: the image's first")
	f.StringVar(&o.pullSecret, "pull-secret", "", "Secret in the namespace with registry credentials")
	f.BoolVar(&o.plainHTTP, "plain-http", false, "pull over plain HTTP")
	return cmd
}

func newUndeployIstioCmd(s streams) *cobra.Command {
	o := &deployOptions{}
	cmd := &cobra.Command{
		Use:     "istio --id ID",
		Short:   "Remove a filter deployed with `wasme deploy istio`",
		Long:    "Delete the FilterDeployment named after --id; the operator removes its EnvoyFilters and restores the workloads.",
		Example: "  wasme undeploy istio --id custom-header -n bookinfo",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkID(o.id); err != nil {
				return err
			}
			c, err := kubeClient(o.kubeconfig)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			fd := &wasmev1.FilterDeployment{ObjectMeta: metav1.ObjectMeta{Namespace: o.namespace, Name: o.id}}
			var opts []client.DeleteOption
			if o.dryRun {
				opts = append(opts, client.DryRunAll)
			}
			if err := c.Delete(ctx, fd, opts...); err != nil {
				if apierrors.IsNotFound(err) {
					return fmt.Errorf("no filter %q deployed in namespace %s", o.id, o.namespace)
				}
				return fmt.Errorf("deleting filterdeployment %s/%s: %w", o.namespace, o.id, err)
			}
			if o.dryRun {
				fmt.Fprintf(s.out, "filterdeployment %s/%s would be deleted (dry run)\n", o.namespace, o.id)
				return nil
			}
			fmt.Fprintf(s.out, "filterdeployment %s/%s deleted\n", o.namespace, o.id)
			if o.wait == 0 {
				return nil
			}
			ctx, cancel := context.WithTimeout(ctx, o.wait)
			defer cancel()
			for {
				err := c.Get(ctx, client.ObjectKeyFromObject(fd), fd)
				if apierrors.IsNotFound(err) {
					fmt.Fprintf(s.out, "filterdeployment %s/%s removed, workloads restored\n", o.namespace, o.id)
					return nil
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("the operator did not finish removing %s/%s within %s: is wasme-operator running?", o.namespace, o.id, o.wait)
				case <-time.After(200 * time.Millisecond):
				}
			}
		},
	}
	o.selectionFlags(cmd)
	return cmd
}

func checkID(id string) error {
	if id == "" {
		return fmt.Errorf("--id is required")
	}
	if errs := validation.IsDNS1123Subdomain(id); len(errs) > 0 {
		return fmt.Errorf("--id %q: %s", id, strings.Join(errs, "; "))
	}
	return nil
}

// filterDeployment is the object the flags describe; the API server checks the rest.
func (o *deployOptions) filterDeployment(image string) (*wasmev1.FilterDeployment, error) {
	if err := checkID(o.id); err != nil {
		return nil, err
	}
	fd := &wasmev1.FilterDeployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: wasmev1.GroupVersion.String(), Kind: "FilterDeployment"},
		ObjectMeta: metav1.ObjectMeta{Namespace: o.namespace, Name: o.id},
		Spec: wasmev1.FilterDeploymentSpec{
			Filter: wasmev1.FilterSpec{Image: image, ID: o.id, RootID: o.rootID, PatchContext: o.patchContext},
			Deployment: wasmev1.DeploymentSpec{Istio: wasmev1.IstioDeploymentSpec{
				Kind: o.workloadType, IstioNamespace: o.istioNamespace,
			}},
		},
	}
	if _, err := fd.Spec.Deployment.Istio.WorkloadKind(); err != nil {
		return nil, fmt.Errorf("--workload-type: %w", err)
	}
	if _, err := fd.Spec.Filter.EnvoyPatchContext(); err != nil {
		return nil, fmt.Errorf("--patch-context: %w", err)
	}
	if len(o.labels) > 0 {
		fd.Spec.Deployment.Istio.Labels = map[string]wasmev1.LabelValue{}
		for k, v := range o.labels {
			fd.Spec.Deployment.Istio.Labels[k] = wasmev1.LabelValue(v)
		}
	}
	if o.config != "" {
		raw, _ := json.Marshal(o.config)
		fd.Spec.Filter.Config = &apiextensionsv1.JSON{Raw: raw}
	}
	if o.pullSecret != "" || o.plainHTTP {
		fd.Spec.Filter.ImagePullOptions = &wasmev1.ImagePullOptions{PullSecret: o.pullSecret, PlainHTTP: o.plainHTTP}
	}
	return fd, nil
}

func kubeClient(kubeconfig string) (client.Client, error) {
	cfg, err := kube.Config(kubeconfig)
	if err != nil {
		return nil, err
	}
	scheme, err := kube.Scheme()
	if err != nil {
		return nil, err
	}
	return client.New(cfg, client.Options{Scheme: scheme})
}

// applyFD server-side applies the FilterDeployment and reads back what the server made of it.
func applyFD(ctx context.Context, c client.Client, fd *wasmev1.FilterDeployment, opts ...client.ApplyOption) error {
	ac, err := toApply(fd)
	if err != nil {
		return err
	}
	if err := c.Apply(ctx, ac, opts...); err != nil {
		if apimeta.IsNoMatchError(err) {
			return fmt.Errorf("the FilterDeployment API is not installed: kubectl apply -f deploy/crds.yaml")
		}
		return fmt.Errorf("applying filterdeployment %s/%s: %w", fd.Namespace, fd.Name, err)
	}
	// Apply wrote the server's answer into ac.
	b, err := json.Marshal(ac)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, fd)
}

// printFDTable prints the columns of `kubectl get fd`.
func printFDTable(w io.Writer, fd *wasmev1.FilterDeployment) error {
	ready := "-"
	if c := apimeta.FindStatusCondition(fd.Status.Conditions, wasmev1.ReadyCondition); c != nil && fd.Status.ObservedGeneration == fd.Generation {
		ready = string(c.Status)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tIMAGE\tREADY\tWORKLOADS")
	fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", fd.Namespace, fd.Name, fd.Spec.Filter.Image, ready, len(fd.Status.Workloads))
	return tw.Flush()
}

// waitReady waits for Ready (or Stalled, which will not change by waiting) and prints the
// per-workload result.
func waitReady(ctx context.Context, c client.Client, fd *wasmev1.FilterDeployment, timeout time.Duration, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := ""
	for {
		if err := c.Get(ctx, client.ObjectKeyFromObject(fd), fd); err != nil {
			return fmt.Errorf("reading filterdeployment %s/%s: %w", fd.Namespace, fd.Name, err)
		}
		ready := apimeta.FindStatusCondition(fd.Status.Conditions, wasmev1.ReadyCondition)
		current := fd.Status.ObservedGeneration == fd.Generation && ready != nil
		if current && ready.Message != last {
			fmt.Fprintf(out, "  %s: %s\n", ready.Reason, ready.Message)
			last = ready.Message
		}
		switch {
		case current && ready.Status == metav1.ConditionTrue:
			for name, w := range fd.Status.Workloads {
				fmt.Fprintf(out, "  %s: %s\n", name, w.State)
			}
			return nil
		case current && apimeta.IsStatusConditionTrue(fd.Status.Conditions, wasmev1.StalledCondition):
			return fmt.Errorf("filter not deployed: %s", ready.Message)
		}
		select {
		case <-ctx.Done():
			msg := "no status yet: is wasme-operator running?"
			if ready != nil {
				msg = ready.Message
			}
			return fmt.Errorf("not ready after %s: %s", timeout, msg)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// toApply is the FilterDeployment the flags describe as an apply configuration: every field
// the struct has (the CLI owns them all), no status and no creation time.
func toApply(fd *wasmev1.FilterDeployment) (*wasmeac.FilterDeploymentApplyConfiguration, error) {
	b, err := json.Marshal(fd)
	if err != nil {
		return nil, err
	}
	ac := &wasmeac.FilterDeploymentApplyConfiguration{}
	if err := json.Unmarshal(b, ac); err != nil {
		return nil, err
	}
	ac.Status = nil
	ac.CreationTimestamp = nil
	return ac, nil
}
