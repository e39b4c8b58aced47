using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;
using Vfio.Interop;

namespace Vfio.Tests.Core;

/// <summary>
/// Compiles native/abi-check/abi_check.c against the uAPI headers and compares every size, offset, field
/// width, signedness, ioctl number and constant it prints with the managed bindings; fails naming the field.
/// </summary>
public class AbiCheckTests
{
    /// <summary>Managed names that are not the C name.</summary>
    private static readonly Dictionary<string, string> Aliases = new() { ["ApiVersion"] = "VFIO_API_VERSION" };

    private static (int Code, string Out, string Err) Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            p.Kill(entireProcessTree: true);
            return (-1, "", $"{file} timed out");
        }
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    private static string? FindOnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists);

    /// <summary>
    /// The include dir with the newer uAPI headers: $VFIO_UAPI_INCLUDE, else the cache that
    /// fetch-uapi-headers.sh fills (running it when the cache is empty), else null (system headers).
    /// </summary>
    private static (string? Include, string How) FindHeaders(string repo)
    {
        var env = Environment.GetEnvironmentVariable("VFIO_UAPI_INCLUDE");
        if (!string.IsNullOrEmpty(env))
            return (env, "VFIO_UAPI_INCLUDE");
        const string cache = "/var/cache/vfio-mig-uapi/root/usr/include";
        if (File.Exists(Path.Combine(cache, "linux", "vfio.h")))
            return (cache, "cached bookworm-backports linux-libc-dev");
        var script = Path.Combine(repo, "native", "abi-check", "fetch-uapi-headers.sh");
        if (File.Exists(script) && Libc.GetEuid() == 0)
        {
            var (code, output, err) = Run("/bin/sh", script);
            if (code == 0 && Directory.Exists(output.Trim()))
                return (output.Trim(), "bookworm-backports linux-libc-dev fetched now");
            return (null, $"system headers (fetching the backports headers failed: {err.Trim()})");
        }
        return (null, "system headers");
    }

    private static string PascalCase(string cName) =>
        string.Concat(cName.Split('_', StringSplitOptions.RemoveEmptyEntries).Select(p => char.ToUpperInvariant(p[0]) + p[1..]));

    private static long ManagedValue(FieldInfo f)
    {
        var v = f.GetValue(null)!;
        return v switch
        {
            nuint n => (long)(ulong)n,
            ulong u => unchecked((long)u),
            _ => Convert.ToInt64(v, System.Globalization.CultureInfo.InvariantCulture),
        };
    }

    private static bool IsSigned(Type t) => t == typeof(int) || t == typeof(long) || t == typeof(short) || t == typeof(sbyte) || t == typeof(nint);

    [Fact]
    public void ManagedBindings_MatchTheCHeaders()
    {
        var cc = FindOnPath("cc") ?? FindOnPath("gcc");
        if (cc is null)
            Assert.Skip("no C compiler (cc) on this machine: the ABI check cannot be compiled");
        var repo = RepoPaths.Root();
        var (include, how) = FindHeaders(repo);
        var tmp = Directory.CreateTempSubdirectory("vfio-abi-");
        try
        {
            var exe = Path.Combine(tmp.FullName, "abi_check");
            var args = new List<string> { "-std=gnu11", "-Wall", "-Wextra", "-Werror" };
            if (include is not null) { args.Add("-isystem"); args.Add(include); }
            args.AddRange(["-o", exe, Path.Combine(repo, "native", "abi-check", "abi_check.c")]);
            var (ccCode, _, ccErr) = Run(cc, [.. args]);
            Assert.True(ccCode == 0, $"cc failed: {ccErr}");
            var (code, output, err) = Run(exe);
            Assert.True(code == 0, $"abi_check failed: {err}");

            var values = new Dictionary<string, long>();
            var missing = new HashSet<string>();
            string version = "?";
            foreach (var raw in output.Split('\n', StringSplitOptions.RemoveEmptyEntries))
            {
                if (raw.StartsWith("missing:", StringComparison.Ordinal)) { missing.Add(raw[8..]); continue; }
                if (raw.StartsWith("header:LINUX_VERSION_CODE=", StringComparison.Ordinal))
                {
                    long v = long.Parse(raw[26..], System.Globalization.CultureInfo.InvariantCulture);
                    version = $"{v >> 16}.{(v >> 8) & 0xff}";
                    continue;
                }
                int eq = raw.LastIndexOf('=');
                values[raw[..eq]] = long.Parse(raw[(eq + 1)..], System.Globalization.CultureInfo.InvariantCulture);
            }

            var failures = new List<string>();
            var notChecked = new List<string>();
            int compared = 0;

            // Constants and ioctl numbers: every public constant of VfioUapi and Libc.
            foreach (var type in new[] { typeof(VfioUapi), typeof(Libc) })
            {
                foreach (var f in type.GetFields(BindingFlags.Public | BindingFlags.Static))
                {
                    if (!f.IsLiteral && !f.IsInitOnly) continue;
                    var cName = Aliases.GetValueOrDefault(f.Name, f.Name);
                    if (missing.Contains(cName)) { notChecked.Add(cName); continue; }
                    if (!values.TryGetValue(cName, out var c))
                    {
                        failures.Add($"{type.Name}.{f.Name}: abi_check.c does not print {cName}");
                        continue;
                    }
                    long m = ManagedValue(f);
                    compared++;
                    if (m != c) failures.Add($"{type.Name}.{f.Name} = {m} (0x{m:x}) but C {cName} = {c} (0x{c:x})");
                }
            }

            // Structs: every public struct of Vfio.Interop, every field.
            var cStructs = values.Keys.Where(k => k.StartsWith("sizeof(", StringComparison.Ordinal)).Select(k => k[7..^1])
                .Concat(missing.Where(m => string.Equals(m, m.ToLowerInvariant(), StringComparison.Ordinal))).ToHashSet();
            var managedStructs = typeof(VfioUapi).Assembly.GetTypes()
                .Where(t => t.IsPublic && t.IsValueType && !t.IsEnum && t.Namespace == "Vfio.Interop").ToList();
            foreach (var cStruct in cStructs)
                if (managedStructs.All(t => t.Name != PascalCase(cStruct)))
                    failures.Add($"C struct {cStruct} has no managed struct {PascalCase(cStruct)}");
            foreach (var t in managedStructs)
            {
                var cStruct = cStructs.FirstOrDefault(c => PascalCase(c) == t.Name);
                if (cStruct is null) { failures.Add($"struct {t.Name}: abi_check.c does not print it"); continue; }
                if (missing.Contains(cStruct)) { notChecked.Add($"struct {cStruct}"); continue; }
                compared++;
                int size = Marshal.SizeOf(t);
                if (size != values[$"sizeof({cStruct})"])
                    failures.Add($"{t.Name}: size {size} but sizeof(struct {cStruct}) = {values[$"sizeof({cStruct})"]}");
                var cFields = values.Keys.Where(k => k.StartsWith($"offsetof({cStruct}.", StringComparison.Ordinal))
                    .Select(k => k[(10 + cStruct.Length)..^1]).ToList();
                var mFields = t.GetFields(BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance);
                foreach (var cf in cFields)
                    if (mFields.All(f => f.Name != PascalCase(cf)))
                        failures.Add($"{t.Name}: C field {cStruct}.{cf} has no managed field {PascalCase(cf)}");
                foreach (var f in mFields)
                {
                    var cf = cFields.FirstOrDefault(c => PascalCase(c) == f.Name);
                    if (cf is null) { failures.Add($"{t.Name}.{f.Name}: no such field in struct {cStruct}"); continue; }
                    compared++;
                    long off = Marshal.OffsetOf(t, f.Name).ToInt64();
                    if (off != values[$"offsetof({cStruct}.{cf})"])
                        failures.Add($"{t.Name}.{f.Name}: offset {off} but offsetof({cStruct}, {cf}) = {values[$"offsetof({cStruct}.{cf})"]}");
                    int fsize = Marshal.SizeOf(f.FieldType);
                    if (fsize != values[$"fieldsize({cStruct}.{cf})"])
                        failures.Add($"{t.Name}.{f.Name}: size {fsize} but {cStruct}.{cf} is {values[$"fieldsize({cStruct}.{cf})"]} bytes");
                    bool signed = values[$"signed({cStruct}.{cf})"] != 0;
                    if (IsSigned(f.FieldType) != signed)
                        failures.Add($"{t.Name}.{f.Name}: {(IsSigned(f.FieldType) ? "signed" : "unsigned")} "
                            + $"but {cStruct}.{cf} is {(signed ? "signed" : "unsigned")}");
                }
            }

            var log = new StringBuilder();
            log.AppendLine($"headers: {include ?? "/usr/include"} ({how}), uAPI {version}; {compared} facts compared");
            if (notChecked.Count > 0)
                log.AppendLine($"not checked (absent from these headers): {string.Join(", ", notChecked)}");
            TestContext.Current.TestOutputHelper?.WriteLine(log.ToString());
            Assert.True(failures.Count == 0, "ABI mismatches:\n" + string.Join("\n", failures) + "\n" + log);
            Assert.True(compared > 100, $"only {compared} facts compared");
        }
        finally
        {
            tmp.Delete(recursive: true);
        }
    }
}
