package cli

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// docs/cli.md is generated from the command tree (make generate); a flag or verb added
// without regenerating fails here as well as in make verify.
func TestCLIReferenceIsCurrent(t *testing.T) {
	var want bytes.Buffer
	if err := WriteReference(&want); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatal("docs/cli.md is stale: run make generate")
	}
	page := want.String()
	for _, c := range visible(NewRootCmd(streams{})) {
		if !strings.Contains(page, "\n## "+c.CommandPath()+"\n") {
			t.Errorf("docs/cli.md has no section for %q", c.CommandPath())
		}
	}
	for _, s := range []string{"## wasme completion bash", "--max-module-size", "--layout"} {
		if !strings.Contains(page, s) {
			t.Errorf("docs/cli.md lacks %q", s)
		}
	}
	if strings.Contains(page, "validate-module") {
		t.Error("docs/cli.md lists the hidden validate-module verb")
	}
}
