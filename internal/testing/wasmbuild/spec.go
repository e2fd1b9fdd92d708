package wasmbuild

import "strings"

// Sig is a function signature in the form the host's load errors print: "(i32,i64)->(i32)".
type Sig string

// SpecImport is one imported function of a Spec.
type SpecImport struct {
	Module, Name string
	Sig          Sig
}

// SpecExport is one exported function of a Spec; its body returns zeros.
type SpecExport struct {
	Name string
	Sig  Sig
}

// Spec describes a module by its imports and exports alone, for load-time checks: exactly
// the interface a case needs, written the way the errors print it.
type Spec struct {
	Imports []SpecImport
	Exports []SpecExport
	Memory  bool // define and export "memory"
}

// Filter is the smallest module that passes Envoy's load checks under ABI abi ("0_2_1"): the
// ABI marker, a memory and an allocator. Add to it to make a bad one.
func Filter(abi string) Spec {
	return Spec{Memory: true, Exports: []SpecExport{
		Exp("proxy_abi_version_"+abi, "()->()"),
		Exp("proxy_on_memory_allocate", "(i32)->(i32)"),
	}}
}

// Imp is a SpecImport.
func Imp(module, name string, sig Sig) SpecImport {
	return SpecImport{Module: module, Name: name, Sig: sig}
}

// Exp is a SpecExport.
func Exp(name string, sig Sig) SpecExport { return SpecExport{Name: name, Sig: sig} }

func (s Sig) types() (params, results []byte) {
	p, r, ok := strings.Cut(string(s), ")->(")
	if !ok {
		panic("wasmbuild: bad signature " + string(s))
	}
	conv := func(list string) []byte {
		var out []byte
		for _, t := range strings.Split(list, ",") {
			switch t {
			case "i32":
				out = append(out, I32)
			case "i64":
				out = append(out, I64)
			case "":
			default:
				panic("wasmbuild: unsupported value type " + t)
			}
		}
		return out
	}
	return conv(strings.TrimPrefix(p, "(")), conv(strings.TrimSuffix(r, ")"))
}

// Bytes encodes the module.
func (s Spec) Bytes() []byte {
	m := &Module{}
	for _, im := range s.Imports {
		p, r := im.Sig.types()
		m.Import(im.Module, im.Name, p, r)
	}
	for _, ex := range s.Exports {
		p, r := ex.Sig.types()
		var body []byte
		for _, t := range r {
			if t == I64 {
				body = append(body, 0x42, 0x00) // i64.const 0
			} else {
				body = append(body, I32c(0)...)
			}
		}
		m.Export(ex.Name, m.Func(p, r, 0, body...))
	}
	if s.Memory {
		m.Memory(1, 1, "memory")
	}
	return m.Bytes()
}
