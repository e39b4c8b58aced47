using System.CommandLine;
using System.Text.Json;
using Vfio.Cli;

namespace Vfio.Tests.Core;

/// <summary>`vfio-mig list` and `info` run in-process against fake trees.</summary>
public sealed class CliDeviceCommandsTests
{
    /// <summary>The device commands reading sysfs and /dev under <paramref name="paths"/>.</summary>
    private static (int Code, string Out, string Err) Invoke(VfioHostPaths paths, params string[] args) => Invoke(paths, null, args);

    private static (int Code, string Out, string Err) Invoke(VfioHostPaths paths, Vfio.Host.IDevlink? devlink, params string[] args)
    {
        var root = new RootCommand();
        foreach (var command in DeviceCommands.Create(paths, devlink))
            root.Subcommands.Add(command);
        return Invoke(root, args);
    }

    /// <summary>devlink as mlx5 shows it: every VF of the PF has a port function with a migratable flag.</summary>
    private sealed class Devlink(Dictionary<int, bool> migratable) : Vfio.Host.IDevlink
    {
        public string? EswitchMode(string pf) => "switchdev";
        public void SetEswitchMode(string pf, string mode) => throw new InvalidOperationException("list changes nothing");
        public (string Port, bool? Migratable)? VfPort(string pf, int vf) =>
            migratable.TryGetValue(vf, out bool m) ? ($"pci/{pf}/{vf + 1}", m) : null;
        public bool? Migratable(string port) => null;
        public void SetMigratable(string port, bool enable) => throw new InvalidOperationException("list changes nothing");
    }

    [Fact]
    public void List_shows_pf_vf_index_numa_node_and_with_all_the_vfs_not_on_vfio_with_devlinks_migratable()
    {
        using var fake = new FakeSysfs();
        fake.CreateDevVfio();
        fake.MakeVf("0000:af:00.0", FakeSysfs.MlxVf, 0, numaNode: 1);
        fake.MakeVf("0000:af:00.0", FakeSysfs.MlxVfCore, 1, numaNode: 1);
        var devlink = new Devlink(new() { [0] = true, [1] = false });

        var (code, stdout, _) = Invoke(fake.Paths, devlink, "list", "--no-probe");
        Assert.Equal(0, code);
        var lines = Lines(stdout);
        Assert.Contains("PF", lines[0]);
        Assert.Contains("NUMA", lines[0]);
        Assert.DoesNotContain(FakeSysfs.MlxVfCore, stdout); // not on a VFIO driver: only with --all
        Assert.Matches(@"0000:af:00\.2\s+pci\s+mlx5_vfio_pci\s+0000:af:00\.0\s+0\s+77\s+1\s+vfio3\s+not probed; devlink migratable enable", stdout);

        (code, stdout, _) = Invoke(fake.Paths, devlink, "list", "--no-probe", "--all", "--json");
        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(stdout);
        var core = doc.RootElement.EnumerateArray().Single(d => d.GetProperty("name").GetString() == FakeSysfs.MlxVfCore);
        Assert.Equal(("0000:af:00.0", 1, 1), (core.GetProperty("pf").GetString(), core.GetProperty("vf_index").GetInt32(),
            core.GetProperty("numa_node").GetInt32()));
        Assert.Equal("not bound to a VFIO driver", core.GetProperty("migration_status").GetString());
        Assert.False(core.GetProperty("devlink_migratable").GetBoolean());
        var plain = doc.RootElement.EnumerateArray().Single(d => d.GetProperty("name").GetString() == FakeSysfs.VfioPciNoCdev);
        Assert.Equal(JsonValueKind.Null, plain.GetProperty("pf").ValueKind);
        Assert.False(plain.TryGetProperty("devlink_migratable", out _));
    }

    private static (int Code, string Out, string Err) Invoke(RootCommand root, params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = root.Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }

    private static string[] Lines(string s) => s.Split('\n', StringSplitOptions.RemoveEmptyEntries);

    [Fact]
    public void List_WithoutDevVfio_SaysSoInOneLineAndExitsZero()
    {
        using var fake = new FakeSysfs();
        var (code, stdout, stderr) = Invoke(fake.Paths, "list");
        Assert.Equal(0, code);
        Assert.Equal("", stdout);
        var line = Assert.Single(Lines(stderr));
        Assert.Contains("no ", line);
        Assert.Contains("VFIO is not available", line);
    }

    [Fact]
    public void ListJson_WithoutDevVfio_PrintsAnEmptyArray()
    {
        using var fake = new FakeSysfs();
        var (code, stdout, stderr) = Invoke(fake.Paths, "list", "--json");
        Assert.Equal(0, code);
        Assert.Equal("[]", stdout.Trim());
        Assert.Single(Lines(stderr));
    }

    [Fact]
    public void List_OnThisMachine_WorksWithTheRealPaths()
    {
        var (code, stdout, _) = Invoke(Program.BuildRoot(), "list", "--json", "--no-probe");
        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(stdout);
        Assert.Equal(JsonValueKind.Array, doc.RootElement.ValueKind);
        if (!VfioHostPaths.Default.HasVfio)
            Assert.Equal(0, doc.RootElement.GetArrayLength());
    }

    [Fact]
    public void ListJson_WithDevVfio_ListsTheVfioDevices()
    {
        using var fake = new FakeSysfs();
        fake.CreateDevVfio();
        var (code, stdout, _) = Invoke(fake.Paths, "list", "--json");
        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(stdout);
        var items = doc.RootElement.EnumerateArray().ToList();
        Assert.Equal(new[] { FakeSysfs.VfioPciNoCdev, FakeSysfs.MlxVf, FakeSysfs.Mdev }, items.Select(i => i.GetProperty("name").GetString()));
        var mlx = items[1];
        Assert.Equal("pci", mlx.GetProperty("kind").GetString());
        Assert.Equal("mlx5_vfio_pci", mlx.GetProperty("driver").GetString());
        Assert.Equal(77, mlx.GetProperty("iommu_group").GetInt32());
        Assert.Equal("vfio3", mlx.GetProperty("cdev").GetString());
        Assert.Equal(JsonValueKind.Null, mlx.GetProperty("migration_flags").ValueKind);
        Assert.StartsWith("unknown: ", mlx.GetProperty("migration_status").GetString());
        Assert.Equal("mvsim0", items[2].GetProperty("parent").GetString());
    }

    [Fact]
    public void List_WithDevVfio_PrintsATable()
    {
        using var fake = new FakeSysfs();
        fake.CreateDevVfio();
        var (code, stdout, _) = Invoke(fake.Paths, "list", "--no-probe");
        Assert.Equal(0, code);
        var lines = Lines(stdout);
        Assert.Equal(4, lines.Length);
        Assert.StartsWith("DEVICE", lines[0]);
        Assert.Contains("MIGRATION", lines[0]);
        Assert.Contains("mlx5_vfio_pci", lines[2]);
        Assert.Contains("77", lines[2]);
        Assert.Contains("mdev", lines[3]);
    }

    [Fact]
    public void Info_OfAMissingDevice_ExitsNonZeroWithOneLine()
    {
        using var fake = new FakeSysfs();
        var (code, stdout, stderr) = Invoke(fake.Paths, "info", "0000:01:00.0");
        Assert.Equal(ExitCodes.Usage, code); // a name that is no device here is bad input
        Assert.Equal("", stdout);
        var line = Assert.Single(Lines(stderr));
        Assert.Contains("no PCI device 0000:01:00.0", line);
    }

    [Fact]
    public void Info_OfADeviceOnTheWrongDriver_SaysWhichDriver()
    {
        using var fake = new FakeSysfs();
        fake.CreateDevVfio();
        var (code, _, stderr) = Invoke(fake.Paths, "info", FakeSysfs.MlxVfCore, "--json");
        Assert.Equal(1, code);
        var line = Assert.Single(Lines(stderr));
        Assert.Contains("mlx5_core", line);
        Assert.Contains("mlx5_vfio_pci", line);
    }

    [Fact]
    public void Info_WithoutDevVfio_ExitsNonZero()
    {
        using var fake = new FakeSysfs();
        var (code, _, stderr) = Invoke(fake.Paths, "info", FakeSysfs.Mdev);
        Assert.Equal(1, code);
        Assert.Contains("VFIO is not available", Assert.Single(Lines(stderr)));
    }
}
