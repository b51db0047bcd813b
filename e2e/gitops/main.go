// Command gitops-health judges Kubernetes objects the way GitOps tools do, for the
// end-to-end tests: Flux's kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status, the code
// Flux runs) and an Argo CD Lua health script run as Argo CD runs it (gopher-lua, the
// object as the global `obj`, the script's returned table read as status and message).
//
// Usage: gitops-health SCRIPT.lua OBJECTS.json
// OBJECTS.json holds a JSON array of objects; one JSON line per object is printed:
// {"name": ..., "kstatus": ..., "kstatusMessage": ..., "argo": ..., "argoMessage": ...}.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Name           string `json:"name"`
	KStatus        string `json:"kstatus"`
	KStatusMessage string `json:"kstatusMessage"`
	Argo           string `json:"argo"`
	ArgoMessage    string `json:"argoMessage"`
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: gitops-health SCRIPT.lua OBJECTS.json")
		os.Exit(2)
	}
	script, err := os.ReadFile(os.Args[1])
	check(err)
	raw, err := os.ReadFile(os.Args[2])
	check(err)
	// As the API machinery decodes: integers as int64, which kstatus expects.
	var objects []map[string]interface{}
	check(utiljson.Unmarshal(raw, &objects))
	out := json.NewEncoder(os.Stdout)
	for _, o := range objects {
		u := &unstructured.Unstructured{Object: o}
		ks, err := status.Compute(u)
		check(err)
		argo, msg, err := argoHealth(string(script), o)
		check(err)
		check(out.Encode(result{u.GetName(), ks.Status.String(), ks.Message, argo, msg}))
	}
}

// argoHealth runs the script as Argo CD's resource health Lua does: a fresh state with
// the safe libraries, `obj` set from the object, the returned table's status and message.
func argoHealth(script string, obj map[string]interface{}) (string, string, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		fn   lua.LGFunction
	}{{lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}, {lua.StringLibName, lua.OpenString}, {lua.MathLibName, lua.OpenMath}} {
		l.Push(l.NewFunction(lib.fn))
		l.Push(lua.LString(lib.name))
		l.Call(1, 0)
	}
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return "", "", err
	}
	table, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", fmt.Errorf("the script returned %s, not a table", l.Get(-1).Type())
	}
	return lua.LVAsString(table.RawGetString("status")), lua.LVAsString(table.RawGetString("message")), nil
}

// toLua converts decoded JSON into Lua values as Argo CD does: objects and arrays become
// tables (arrays 1-based), numbers LNumber.
func toLua(l *lua.LState, v interface{}) lua.LValue {
	switch v := v.(type) {
	case map[string]interface{}:
		t := l.NewTable()
		for k, e := range v {
			t.RawSetString(k, toLua(l, e))
		}
		return t
	case []interface{}:
		t := l.NewTable()
		for i, e := range v {
			t.RawSetInt(i+1, toLua(l, e))
		}
		return t
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case nil:
		return lua.LNil
	default:
		panic(fmt.Sprintf("unexpected JSON value %T", v))
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "gitops-health:", err)
		os.Exit(1)
	}
}
