using System.Diagnostics;
using System.Text;
using Vfio.Core;
using Vfio.Interop;

namespace Vfio.Host;

/// <summary>
/// The effects host set-up has on the kernel: sysfs writes, module loading, devlink. Reads go straight to the sysfs
/// tree under <see cref="Paths"/>; tests replace the effects with a model of the kernel over a fake tree.
/// </summary>
public interface IHostKernel
{
    VfioHostPaths Paths { get; }

    /// <summary>One write(2) of <paramref name="value"/> to a sysfs attribute; a failure keeps the file and the errno.</summary>
    void Write(string path, string value);

    /// <summary>modprobe NAME (or modprobe -r NAME).</summary>
    void Modprobe(string moduleName, bool remove = false);

    IDevlink Devlink { get; }
}

/// <summary>What host set-up needs of devlink: a PF's eswitch mode and its VFs' port functions.</summary>
public interface IDevlink
{
    /// <summary>legacy or switchdev; null when the PF has no eswitch that devlink knows.</summary>
    string? EswitchMode(string pf);

    void SetEswitchMode(string pf, string mode);

    /// <summary>The port of VF number <paramref name="vf"/> of the PF ("pci/PF/N") and whether it is migratable; null if none.</summary>
    (string Port, bool? Migratable)? VfPort(string pf, int vf);

    /// <summary>Whether a port's function is migratable; null when the port is gone or has no such capability.</summary>
    bool? Migratable(string port);

    void SetMigratable(string port, bool enable);
}

/// <summary>This machine's kernel: sysfs through write(2), modprobe and the devlink tool of iproute2.</summary>
public sealed class LinuxHostKernel(VfioHostPaths paths) : IHostKernel
{
    public VfioHostPaths Paths => paths;

    public IDevlink Devlink { get; } = new DevlinkTool();

    public unsafe void Write(string path, string value)
    {
        // Write-only attributes (unbind, drivers_probe) refuse an open for reading, so O_WRONLY; one write(2), as echo does.
        int fd = Libc.Open(path, Libc.O_WRONLY | Libc.O_CLOEXEC);
        if (fd < 0) throw VfioException.FromLastError($"open {path}", Advice(path));
        using var handle = new FileDescriptorHandle(fd);
        byte[] bytes = Encoding.UTF8.GetBytes(value);
        fixed (byte* p = bytes)
        {
            // p: the pinned array, valid for the call.
            if (Libc.Write(handle, p, (nuint)bytes.Length) < 0)
                throw VfioException.FromLastError($"write '{value.Trim()}' to {path}", Advice(path));
        }
    }

    private static string? Advice(string path) => Path.GetFileName(path) switch
    {
        "sriov_numvfs" => "the count cannot change while VFs exist (write 0 first) or while one of them is in use",
        "unbind" or "bind" or "drivers_probe" => "is the driver loaded and does it support this device?",
        _ => null,
    };

    public void Modprobe(string moduleName, bool remove = false)
    {
        var (code, output) = ProcessRunner.Run("modprobe", remove ? ["-r", moduleName] : [moduleName]);
        if (code != 0) throw new VfioException($"modprobe {(remove ? "-r " : "")}{moduleName}", 0, $"exit code {code}: {output.Trim()}");
    }
}

/// <summary>Runs a tool and collects what it printed.</summary>
internal static class ProcessRunner
{
    public static (int Code, string Output) Run(string tool, IEnumerable<string> args)
    {
        var psi = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        Process process;
        try
        {
            process = Process.Start(psi) ?? throw new VfioException($"run {tool}", Libc.ENOENT);
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new VfioException($"run {tool}", e.NativeErrorCode, $"{tool} is not installed (Debian: apt-get install {Package(tool)})");
        }
        using (process)
        {
            var stderr = process.StandardError.ReadToEndAsync();
            string stdout = process.StandardOutput.ReadToEnd();
            process.WaitForExit();
            return (process.ExitCode, stdout + stderr.Result);
        }
    }

    private static string Package(string tool) => tool switch { "devlink" => "iproute2", "modprobe" => "kmod", _ => tool };
}
