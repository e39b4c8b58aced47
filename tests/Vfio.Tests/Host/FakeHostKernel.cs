using System.Globalization;
using Vfio.Host;
using Vfio.Interop;

namespace Vfio.Tests.Host;

/// <summary>
/// A model of the kernel's PCI sysfs, SR-IOV and devlink behaviour over a fake tree in a temporary folder, strict where
/// the real one is: sriov_numvfs refuses a change from one non-zero count to another (EBUSY), unbind wants the
/// device's own address, drivers_probe binds driver_override or else the device's default driver, and (as mlx5)
/// a port function's migratable flag can be set only in switchdev mode and while the VF has no driver.
/// <see cref="FailAtWrite"/> makes the n-th write fail, as a crash half-way would leave the host.
/// </summary>
internal sealed class FakeHostKernel : IHostKernel, IDevlink, IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"vfio-host-{Guid.NewGuid():N}");
    private readonly Dictionary<string, string> _defaultDriver = new();
    private readonly Dictionary<string, string> _eswitch = new();
    private readonly Dictionary<string, bool> _migratable = new();
    private readonly HashSet<string> _modules = new();
    private int _nextGroup = 40;

    public FakeHostKernel()
    {
        Paths = VfioHostPaths.UnderRoot(_root);
        Directory.CreateDirectory(Paths.PciDevicesDir);
        Directory.CreateDirectory(Path.Combine(Paths.SysfsRoot, "bus", "pci", "drivers"));
        File.WriteAllText(PciFunction.DriversProbe(Paths), "");
    }

    public VfioHostPaths Paths { get; }
    public IDevlink Devlink => this;
    public List<(string Path, string Value)> Writes { get; } = new();
    public List<string> DevlinkCalls { get; } = new();
    public int? FailAtWrite { get; set; }

    public void AddDriver(string name) => Directory.CreateDirectory(PciFunction.DriverDir(name, Paths));

    /// <summary>A driver that is not loaded until modprobe loads it.</summary>
    public void AddModule(string name) => _modules.Add(name);

    /// <summary>
    /// A PF bound to <paramref name="driver"/>, whose VFs bind to <paramref name="vfDriver"/>; with an eswitch when devlink manages it.
    /// </summary>
    public void AddPf(string bdf, int totalVfs, string vendor, string driver, string vfDriver, bool devlink)
    {
        AddFunction(bdf, vendor, driver);
        File.WriteAllText(Attr(bdf, "sriov_totalvfs"), totalVfs.ToString(CultureInfo.InvariantCulture));
        File.WriteAllText(Attr(bdf, "sriov_numvfs"), "0");
        _defaultDriver[bdf + "/vf"] = vfDriver;
        if (devlink) _eswitch[bdf] = "legacy";
    }

    /// <summary>Everything restore must put back, as text: drivers, overrides, VF counts, eswitch modes, migratable flags, loaded drivers.</summary>
    public string Snapshot()
    {
        var lines = new List<string>();
        foreach (var dir in Directory.GetDirectories(Paths.PciDevicesDir).Order(StringComparer.Ordinal))
        {
            var f = PciFunction.Read(Path.GetFileName(dir), Paths);
            lines.Add($"{f.Address} driver={f.Driver} override={f.DriverOverride} numvfs={f.NumVfs}");
        }
        lines.AddRange(_eswitch.OrderBy(e => e.Key, StringComparer.Ordinal).Select(e => $"eswitch {e.Key}={e.Value}"));
        lines.AddRange(_migratable.OrderBy(e => e.Key, StringComparer.Ordinal).Select(e => $"migratable {e.Key}={e.Value}"));
        lines.AddRange(Directory.GetDirectories(Path.Combine(Paths.SysfsRoot, "bus", "pci", "drivers")).Select(Path.GetFileName).Order()
            .Select(d => $"driver {d}"));
        return string.Join('\n', lines);
    }

    public void Write(string path, string value)
    {
        Writes.Add((path, value));
        if (Writes.Count == FailAtWrite) throw new VfioException($"write '{value.Trim()}' to {path}", Libc.EIO, "injected failure");
        string name = Path.GetFileName(path);
        string v = value.Trim();
        if (path == PciFunction.DriversProbe(Paths)) { Probe(v); return; }
        string parent = Path.GetDirectoryName(path)!;
        if (name == "unbind")
        {
            string device = Path.GetFileName(Path.GetDirectoryName(parent))!;
            if (device != v || DriverOf(v) is null) throw new VfioException($"write '{v}' to {path}", Libc.ENODEV);
            File.Delete(Attr(v, "driver"));
            return;
        }
        if (name == "bind")
        {
            string driver = Path.GetFileName(parent);
            if (DriverOf(v) is not null) throw new VfioException($"write '{v}' to {path}", Libc.EBUSY);
            Link(Attr(v, "driver"), PciFunction.DriverDir(driver, Paths));
            return;
        }
        string bdf = Path.GetFileName(parent);
        switch (name)
        {
            case "sriov_numvfs": NumVfs(bdf, int.Parse(v, CultureInfo.InvariantCulture), path); break;
            case "driver_override": File.WriteAllText(path, v.Length == 0 ? "(null)" : v); break;
            default: throw new InvalidOperationException($"the fake kernel does not model writes to {path}");
        }
    }

    public void Modprobe(string moduleName, bool remove = false)
    {
        if (!_modules.Contains(moduleName)) throw new VfioException($"modprobe {moduleName}", 0, "module not found");
        if (remove) Directory.Delete(PciFunction.DriverDir(moduleName, Paths));
        else AddDriver(moduleName);
    }

    public string? EswitchMode(string pf) => _eswitch.GetValueOrDefault(pf);

    public void SetEswitchMode(string pf, string mode)
    {
        DevlinkCalls.Add($"eswitch {pf} {mode}");
        _eswitch[pf] = _eswitch.ContainsKey(pf) ? mode : throw new VfioException("devlink dev eswitch set", Libc.ENODEV);
    }

    public (string Port, bool? Migratable)? VfPort(string pf, int vf)
    {
        string port = $"pci/{pf}/{vf + 1}";
        return _eswitch.ContainsKey(pf) && VfioSysfs.LinkName(Attr(pf, $"virtfn{vf}")) is not null
            ? (port, _migratable.GetValueOrDefault(port)) : null;
    }

    public bool? Migratable(string port) => _migratable.TryGetValue(port, out bool m) ? m : null;

    public void SetMigratable(string port, bool enable)
    {
        DevlinkCalls.Add($"migratable {port} {enable}");
        var parts = port.Split('/');
        string vf = VfioSysfs.LinkName(Attr(parts[1], $"virtfn{int.Parse(parts[2], CultureInfo.InvariantCulture) - 1}"))
            ?? throw new VfioException($"devlink port function set {port}", Libc.ENODEV);
        if (_eswitch[parts[1]] != "switchdev") throw new VfioException($"devlink port function set {port}", Libc.EOPNOTSUPP, "legacy mode");
        if (DriverOf(vf) is not null) throw new VfioException($"devlink port function set {port}", Libc.EBUSY, $"{vf} has a driver");
        _migratable[port] = enable;
    }

    public void Dispose() => Directory.Delete(_root, recursive: true);

    private void NumVfs(string pf, int n, string path)
    {
        int now = int.Parse(File.ReadAllText(path), CultureInfo.InvariantCulture);
        if (now != 0 && n != 0) throw new VfioException($"write '{n}' to {path}", Libc.EBUSY);
        if (n > int.Parse(File.ReadAllText(Attr(pf, "sriov_totalvfs")), CultureInfo.InvariantCulture))
            throw new VfioException($"write '{n}' to {path}", 34); // ERANGE
        for (int i = 0; i < now && n == 0; i++)
        {
            string vf = VfioSysfs.LinkName(Attr(pf, $"virtfn{i}"))!;
            Directory.Delete(Path.Combine(Paths.PciDevicesDir, vf), recursive: true);
            File.Delete(Attr(pf, $"virtfn{i}"));
            _migratable.Remove($"pci/{pf}/{i + 1}");
        }
        for (int i = 0; i < n; i++)
        {
            string vf = $"{pf[..8]}{0x10 + i / 8:x2}.{i % 8}";
            AddFunction(vf, File.ReadAllText(Attr(pf, "vendor")), driver: null);
            _defaultDriver[vf] = _defaultDriver[pf + "/vf"];
            Link(Attr(vf, "physfn"), Path.Combine(Paths.PciDevicesDir, pf));
            Link(Attr(pf, $"virtfn{i}"), Path.Combine(Paths.PciDevicesDir, vf));
            if (_eswitch.ContainsKey(pf)) _migratable[$"pci/{pf}/{i + 1}"] = false;
            Probe(vf);
        }
        File.WriteAllText(path, n.ToString(CultureInfo.InvariantCulture));
    }

    private void Probe(string bdf)
    {
        if (DriverOf(bdf) is not null) return;
        string over = File.ReadAllText(Attr(bdf, "driver_override"));
        string? driver = over != "(null)" ? over : _defaultDriver.GetValueOrDefault(bdf);
        if (driver is not null && Directory.Exists(PciFunction.DriverDir(driver, Paths)))
            Link(Attr(bdf, "driver"), PciFunction.DriverDir(driver, Paths));
    }

    private void AddFunction(string bdf, string vendor, string? driver)
    {
        Directory.CreateDirectory(Path.Combine(Paths.PciDevicesDir, bdf));
        File.WriteAllText(Attr(bdf, "vendor"), vendor);
        File.WriteAllText(Attr(bdf, "driver_override"), "(null)");
        File.WriteAllText(Attr(bdf, "numa_node"), "1");
        string group = Path.Combine(Paths.SysfsRoot, "kernel", "iommu_groups", (_nextGroup++).ToString(CultureInfo.InvariantCulture));
        Directory.CreateDirectory(group);
        Link(Attr(bdf, "iommu_group"), group);
        if (driver is not null)
        {
            AddDriver(driver);
            _defaultDriver[bdf] = driver;
            Link(Attr(bdf, "driver"), PciFunction.DriverDir(driver, Paths));
        }
    }

    private string? DriverOf(string bdf) => VfioSysfs.LinkName(Attr(bdf, "driver"));

    private string Attr(string bdf, string name) => Path.Combine(Paths.PciDevicesDir, bdf, name);

    private static void Link(string path, string target) => File.CreateSymbolicLink(path, target);
}
