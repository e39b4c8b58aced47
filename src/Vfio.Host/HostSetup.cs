using System.Globalization;
using Vfio.Core;

namespace Vfio.Host;

/// <summary>
/// Creates SR-IOV VFs, binds functions to a VFIO driver (with mlx5's devlink steps for migration), and puts the host
/// back as it was. Every change is recorded in the state file before it is made, and printed as the write it is
/// (`--dry-run` prints them without writing anything). For mlx5_vfio_pci the order is the one the driver needs:
/// unbind the VFs, eswitch to switchdev, each VF's port function migratable, then bind to mlx5_vfio_pci; restore runs
/// it backwards. Used from one thread.
/// </summary>
public sealed class HostSetup(IHostKernel kernel, HostStateFile state, TextWriter log, bool dryRun = false)
{
    public const string VfioPci = "vfio-pci";
    public const string Mlx5VfioPci = "mlx5_vfio_pci";

    private VfioHostPaths Paths => kernel.Paths;

    /// <summary>vf create: <paramref name="count"/> VFs on the PF (with <paramref name="replace"/>, whatever VFs it has go first).</summary>
    public IReadOnlyList<string> CreateVfs(string pf, int count, bool replace)
    {
        var f = Argument(pf);
        if (!f.IsPf) throw new ArgumentException($"vf create {f.Address}: not an SR-IOV physical function (no sriov_totalvfs)");
        if (count < 1 || count > f.TotalVfs)
            throw new ArgumentException($"vf create {f.Address}: --count must be 1..{f.TotalVfs} (its sriov_totalvfs)");
        int now = f.NumVfs ?? 0;
        if (now == count && !replace) return PciFunction.VfsOf(f.Address, Paths);
        if (now != 0 && !replace)
            throw new VfioException($"vf create {f.Address}", Interop.Libc.EBUSY,
                $"it has {now} VFs already: --replace removes them first (their drivers let go of them)");
        string numvfs = Path.Combine(PciFunction.DeviceDir(f.Address, Paths), "sriov_numvfs");
        Record(new HostChange(HostChangeKind.NumVfs, f.Address, Num(now), Num(count)));
        if (now != 0) Write(numvfs, "0");
        Write(numvfs, Num(count));
        return dryRun ? Enumerable.Range(0, count).Select(i => $"<virtfn{i} of {f.Address}>").ToList() : PciFunction.VfsOf(f.Address, Paths);
    }

    /// <summary>vf bind: each function to <paramref name="driver"/> (default: mlx5_vfio_pci for Mellanox functions, else vfio-pci).</summary>
    public void Bind(IReadOnlyList<string> devices, string? driver) => Bind(devices.Select(Argument).ToList(), driver);

    /// <summary>A function named on the command line: one that does not exist is a bad argument, before anything changes.</summary>
    private PciFunction Argument(string address)
    {
        try { return PciFunction.Read(address, Paths); }
        catch (VfioException e) when (e.Errno is Interop.Libc.ENOENT or Interop.Libc.EINVAL) { throw new ArgumentException(e.Message, e); }
    }

    /// <summary>vf setup: create the VFs and bind every one of them.</summary>
    public IReadOnlyList<string> Setup(string pf, int count, string? driver, bool replace)
    {
        var vfs = CreateVfs(pf, count, replace);
        if (!dryRun)
        {
            Bind(vfs, driver);
            return vfs;
        }
        // A dry run created nothing: what it would bind are the VFs to be, with their PF's vendor and its VF driver.
        var parent = PciFunction.Read(pf, Paths);
        Bind(vfs.Select((name, i) => parent with
        {
            Address = name, Driver = "its VF driver", DriverOverride = null, Pf = parent.Address, VfIndex = i, TotalVfs = null, NumVfs = null,
        }).ToList(), driver);
        return vfs;
    }

    private void Bind(List<PciFunction> functions, string? driver)
    {
        var changes = functions.Select(f => (f, target: driver ?? DefaultDriver(f))).Where(x => x.f.Driver != x.target).ToList();
        foreach (var target in changes.Select(g => g.target).Distinct()) EnsureDriver(target);
        foreach (var (f, target) in changes)
        {
            Record(new HostChange(HostChangeKind.Driver, f.Address, f.Driver, target, f.DriverOverride));
            if (f.Driver is not null) Write(Path.Combine(PciFunction.DeviceDir(f.Address, Paths), "driver", "unbind"), f.Address);
        }
        // mlx5: migration is a property of the VF's port function, set while the VF has no driver, in switchdev mode.
        var mlx5 = changes.Where(g => g.target == Mlx5VfioPci && g.f.Pf is not null).Select(g => g.f).ToList();
        foreach (var pf in mlx5.Select(f => f.Pf!).Distinct()) Eswitch(pf);
        foreach (var vf in mlx5) Migratable(vf);
        foreach (var (f, target) in changes) Attach(f.Address, target);
    }

    /// <summary>Undoes every recorded change, in the reverse of set-up's order; true when all are undone (the state file goes).</summary>
    public bool Restore()
    {
        var changes = state.Changes.Reverse().ToList();
        var errors = new List<string>();
        void Step(HostChange c, Action undo)
        {
            try { undo(); }
            catch (Exception e) when (e is VfioException or IOException or UnauthorizedAccessException)
            {
                errors.Add($"{c.Target}: {e.Message}");
                log.WriteLine($"vf: restore {c.Kind} of {c.Target} failed: {e.Message}");
            }
        }
        foreach (var c in changes.Where(c => c.Kind == HostChangeKind.Driver)) Step(c, () => UnbindChanged(c));
        foreach (var c in changes.Where(c => c.Kind == HostChangeKind.Migratable)) Step(c, () => UndoMigratable(c));
        foreach (var c in changes.Where(c => c.Kind == HostChangeKind.EswitchMode)) Step(c, () => UndoEswitch(c));
        foreach (var c in changes.Where(c => c.Kind == HostChangeKind.Driver)) Step(c, () => Rebind(c));
        foreach (var c in changes.Where(c => c.Kind == HostChangeKind.NumVfs)) Step(c, () => UndoNumVfs(c));
        foreach (var c in changes.Where(c => c.Kind == HostChangeKind.Module)) Step(c, () => UndoModule(c));
        if (errors.Count > 0 || dryRun) return errors.Count == 0;
        state.Delete();
        return true;
    }

    private static string DefaultDriver(PciFunction f) => f.Vendor == PciFunction.MellanoxVendor ? Mlx5VfioPci : VfioPci;

    private void EnsureDriver(string driver)
    {
        if (Directory.Exists(PciFunction.DriverDir(driver, Paths))) return;
        Record(new HostChange(HostChangeKind.Module, driver, null, "loaded"));
        log.WriteLine($"vf: modprobe {driver}");
        if (dryRun) return;
        kernel.Modprobe(driver);
        if (!Directory.Exists(PciFunction.DriverDir(driver, Paths)))
            throw new VfioException($"modprobe {driver}", Interop.Libc.ENOENT, $"no PCI driver {driver} after loading its module");
    }

    private void Eswitch(string pf)
    {
        string? mode = dryRun ? null : kernel.Devlink.EswitchMode(pf);
        if (mode == "switchdev") return;
        if (!dryRun && mode is null)
            throw new VfioException($"devlink dev eswitch show pci/{pf}", Interop.Libc.ENODEV, "devlink knows no eswitch for this PF");
        Record(new HostChange(HostChangeKind.EswitchMode, pf, mode, "switchdev"));
        log.WriteLine($"vf: devlink dev eswitch set pci/{pf} mode switchdev");
        if (!dryRun) kernel.Devlink.SetEswitchMode(pf, "switchdev");
    }

    private void Migratable(PciFunction vf)
    {
        if (dryRun)
        {
            log.WriteLine($"vf: devlink port function set <port of VF {vf.VfIndex} of {vf.Pf}> migratable enable");
            return;
        }
        var port = kernel.Devlink.VfPort(vf.Pf!, vf.VfIndex ?? -1)
            ?? throw new VfioException($"devlink port show (VF {vf.VfIndex} of {vf.Pf})", Interop.Libc.ENODEV, $"no devlink port for {vf.Address}");
        if (port.Migratable == true) return;
        if (port.Migratable is null)
            throw new VfioException($"devlink port show {port.Port}", Interop.Libc.EOPNOTSUPP,
                "its port function has no migratable capability (firmware or kernel too old for migration)");
        Record(new HostChange(HostChangeKind.Migratable, port.Port, "disable", "enable"));
        log.WriteLine($"vf: devlink port function set {port.Port} migratable enable");
        kernel.Devlink.SetMigratable(port.Port, true);
    }

    private void Attach(string address, string driver)
    {
        Write(Path.Combine(PciFunction.DeviceDir(address, Paths), "driver_override"), driver);
        Write(PciFunction.DriversProbe(Paths), address);
        if (dryRun) return;
        var now = PciFunction.Read(address, Paths);
        if (now.Driver != driver)
            throw new VfioException($"bind {address} to {driver}", Interop.Libc.ENODEV,
                $"drivers_probe left it with {now.Driver ?? "no driver"} (does {driver} support this device?)");
    }

    private void UnbindChanged(HostChange c)
    {
        if (!Exists(c.Target)) return;
        var f = PciFunction.Read(c.Target, Paths);
        if (f.Driver is not null && f.Driver != c.Before) Write(Path.Combine(PciFunction.DeviceDir(f.Address, Paths), "driver", "unbind"), f.Address);
    }

    private void Rebind(HostChange c)
    {
        if (!Exists(c.Target)) return;
        var f = PciFunction.Read(c.Target, Paths);
        if (f.DriverOverride != c.BeforeOverride)
            Write(Path.Combine(PciFunction.DeviceDir(f.Address, Paths), "driver_override"), c.BeforeOverride ?? "\n");
        if (c.Before is null || f.Driver == c.Before) return;
        Write(PciFunction.DriversProbe(Paths), f.Address);
        if (dryRun || PciFunction.Read(f.Address, Paths).Driver == c.Before) return;
        // Probing picked another driver than the one it had (it was bound by hand): bind that one explicitly.
        var now = PciFunction.Read(f.Address, Paths);
        if (now.Driver is not null) Write(Path.Combine(PciFunction.DeviceDir(f.Address, Paths), "driver", "unbind"), f.Address);
        Write(Path.Combine(PciFunction.DriverDir(c.Before, Paths), "bind"), f.Address);
    }

    private void UndoMigratable(HostChange c)
    {
        // The port is gone with its VF (the PF's VFs were removed meanwhile): nothing is left to undo.
        bool before = c.Before == "enable";
        if (!dryRun && kernel.Devlink.Migratable(c.Target) is var now && (now is null || now == before)) return;
        log.WriteLine($"vf: devlink port function set {c.Target} migratable {c.Before}");
        if (!dryRun) kernel.Devlink.SetMigratable(c.Target, before);
    }

    private void UndoEswitch(HostChange c)
    {
        if (c.Before is null || !Exists(c.Target)) return;
        if (!dryRun && kernel.Devlink.EswitchMode(c.Target) == c.Before) return;
        log.WriteLine($"vf: devlink dev eswitch set pci/{c.Target} mode {c.Before}");
        if (!dryRun) kernel.Devlink.SetEswitchMode(c.Target, c.Before);
    }

    private void UndoNumVfs(HostChange c)
    {
        if (!Exists(c.Target)) return;
        string path = Path.Combine(PciFunction.DeviceDir(c.Target, Paths), "sriov_numvfs");
        int now = PciFunction.Read(c.Target, Paths).NumVfs ?? 0;
        if (Num(now) == c.Before) return;
        if (now != 0) Write(path, "0");
        if (c.Before is not (null or "0")) Write(path, c.Before);
    }

    private void UndoModule(HostChange c)
    {
        log.WriteLine($"vf: modprobe -r {c.Target}");
        if (dryRun) return;
        try { kernel.Modprobe(c.Target, remove: true); }
        catch (VfioException e) { log.WriteLine($"vf: {c.Target} stays loaded ({e.Message})"); }
    }

    /// <summary>A dry run records nothing: it changes nothing.</summary>
    private void Record(HostChange change)
    {
        if (!dryRun) state.Record(change);
    }

    private bool Exists(string bdf) => Directory.Exists(PciFunction.DeviceDir(bdf, Paths));

    private void Write(string path, string value)
    {
        log.WriteLine($"vf: write '{value.Trim()}' to {path}");
        if (!dryRun) kernel.Write(path, value);
    }

    private static string Num(int n) => n.ToString(CultureInfo.InvariantCulture);
}
