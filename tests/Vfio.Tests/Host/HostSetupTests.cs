using System.CommandLine;
using Vfio.Cli;
using Vfio.Host;

namespace Vfio.Tests.Host;

/// <summary>vf create/bind/setup/restore against a model of the kernel: the host always comes back exactly as it was.</summary>
public sealed class HostSetupTests : IDisposable
{
    private const string MlxPf = "0000:3b:00.0";
    private const string IgbPf = "0000:05:00.0";
    private readonly FakeHostKernel _kernel = new();
    private readonly string _state = Path.Combine(Path.GetTempPath(), $"vfio-host-state-{Guid.NewGuid():N}.json");

    public HostSetupTests()
    {
        _kernel.AddPf(MlxPf, totalVfs: 8, vendor: PciFunction.MellanoxVendor, driver: "mlx5_core", vfDriver: "mlx5_core", devlink: true);
        _kernel.AddPf(IgbPf, totalVfs: 7, vendor: "0x8086", driver: "igb", vfDriver: "igbvf", devlink: false);
        _kernel.AddDriver(HostSetup.Mlx5VfioPci);
        _kernel.AddModule(HostSetup.VfioPci); // not loaded until modprobe
    }

    public void Dispose()
    {
        _kernel.Dispose();
        File.Delete(_state);
    }

    private HostSetup Setup(StringWriter log, bool dryRun = false) => new(_kernel, HostStateFile.Open(_state), log, dryRun);

    [Fact]
    public void Mlx5_setup_binds_migratable_vfs_in_the_drivers_order_and_restore_puts_everything_back()
    {
        string before = _kernel.Snapshot();
        var log = new StringWriter();
        var vfs = Setup(log).Setup(MlxPf, 2, driver: null, replace: false);

        Assert.Equal(2, vfs.Count);
        foreach (var vf in vfs)
        {
            var f = PciFunction.Read(vf, _kernel.Paths);
            Assert.Equal((HostSetup.Mlx5VfioPci, MlxPf), (f.Driver, f.Pf));
        }
        Assert.Equal("switchdev", _kernel.EswitchMode(MlxPf));
        Assert.Equal([true, true], [_kernel.Migratable($"pci/{MlxPf}/1"), _kernel.Migratable($"pci/{MlxPf}/2")]);
        // The model refuses migratable in legacy mode or with a driver bound: the order was switchdev, unbind, migratable, bind.
        Assert.Equal($"eswitch {MlxPf} switchdev", _kernel.DevlinkCalls[0]);
        Assert.Contains($"write '2' to {_kernel.Paths.PciDevicesDir}/{MlxPf}/sriov_numvfs", log.ToString());
        Assert.True(File.Exists(_state));

        Assert.True(Setup(new StringWriter()).Restore());
        Assert.Equal(before, _kernel.Snapshot());
        Assert.False(File.Exists(_state));
    }

    [Fact]
    public void Vfio_pci_on_a_non_mellanox_pf_loads_the_module_touches_no_devlink_and_unloads_it_on_restore()
    {
        string before = _kernel.Snapshot();
        var vfs = Setup(new StringWriter()).Setup(IgbPf, 3, driver: null, replace: false);
        Assert.All(vfs, vf => Assert.Equal(HostSetup.VfioPci, PciFunction.Read(vf, _kernel.Paths).Driver));
        Assert.Empty(_kernel.DevlinkCalls);
        Assert.True(Setup(new StringWriter()).Restore());
        Assert.Equal(before, _kernel.Snapshot());
    }

    [Fact]
    public void A_set_up_that_fails_at_any_write_is_restored_exactly()
    {
        string before = _kernel.Snapshot();
        Setup(new StringWriter()).Setup(MlxPf, 2, null, false);
        int writes = _kernel.Writes.Count;
        Assert.True(Setup(new StringWriter()).Restore());
        Assert.True(writes > 5, $"only {writes} writes");

        for (int failAt = 1; failAt <= writes; failAt++)
        {
            _kernel.Writes.Clear();
            _kernel.FailAtWrite = failAt;
            var e = Assert.Throws<VfioException>(() => Setup(new StringWriter()).Setup(MlxPf, 2, null, false));
            Assert.Equal(Vfio.Interop.Libc.EIO, e.Errno);
            _kernel.FailAtWrite = null;
            Assert.True(Setup(new StringWriter()).Restore(), $"restore after a failure at write {failAt}");
            Assert.True(before == _kernel.Snapshot(), $"after a failure at write {failAt}:\n{_kernel.Snapshot()}\nexpected\n{before}");
            Assert.False(File.Exists(_state));
        }
    }

    [Fact]
    public void A_second_set_up_keeps_the_first_before_so_restore_returns_to_the_start()
    {
        string before = _kernel.Snapshot();
        Setup(new StringWriter()).Setup(IgbPf, 2, HostSetup.VfioPci, replace: false);
        Setup(new StringWriter()).Setup(IgbPf, 4, HostSetup.VfioPci, replace: true);
        Assert.Equal(4, PciFunction.Read(IgbPf, _kernel.Paths).NumVfs);
        Assert.True(Setup(new StringWriter()).Restore());
        Assert.Equal(before, _kernel.Snapshot());
    }

    [Fact]
    public void Dry_run_writes_nothing_and_records_nothing_but_prints_every_write()
    {
        string before = _kernel.Snapshot();
        var log = new StringWriter();
        var vfs = Setup(log, dryRun: true).Setup(MlxPf, 2, null, false);
        Assert.Empty(_kernel.Writes);
        Assert.Empty(_kernel.DevlinkCalls);
        Assert.False(File.Exists(_state));
        Assert.Equal(before, _kernel.Snapshot());
        string text = log.ToString();
        Assert.Contains($"write '2' to {_kernel.Paths.PciDevicesDir}/{MlxPf}/sriov_numvfs", text);
        Assert.Contains($"devlink dev eswitch set pci/{MlxPf} mode switchdev", text);
        Assert.Contains("migratable enable", text);
        Assert.Contains($"write '{vfs[1]}' to {PciFunction.DriversProbe(_kernel.Paths)}", text);
    }

    [Fact]
    public void Refusals_name_the_pf_and_why()
    {
        var setup = Setup(new StringWriter());
        Assert.Contains("sriov_totalvfs", Assert.Throws<ArgumentException>(() => setup.CreateVfs(IgbPf, 8, false)).Message);
        setup.CreateVfs(IgbPf, 2, false);
        var busy = Assert.Throws<VfioException>(() => setup.CreateVfs(IgbPf, 3, false));
        Assert.Equal(Vfio.Interop.Libc.EBUSY, busy.Errno);
        Assert.Contains("--replace", busy.Message);
        var vf = PciFunction.VfsOf(IgbPf, _kernel.Paths)[0];
        Assert.Contains("not an SR-IOV physical function", Assert.Throws<ArgumentException>(() => setup.CreateVfs(vf, 1, false)).Message);
        Assert.Contains("no PCI device", Assert.Throws<ArgumentException>(() => setup.CreateVfs("0000:99:00.0", 1, false)).Message);
    }

    [Fact]
    public void A_kernel_refusal_keeps_the_file_and_errno()
    {
        var setup = Setup(new StringWriter());
        setup.CreateVfs(IgbPf, 2, false);
        // Another tool changed the count meanwhile: the kernel's EBUSY comes from the write itself.
        var e = Assert.Throws<VfioException>(() => _kernel.Write(Path.Combine(_kernel.Paths.PciDevicesDir, IgbPf, "sriov_numvfs"), "3"));
        Assert.Equal(Vfio.Interop.Libc.EBUSY, e.Errno);
        Assert.Contains("sriov_numvfs", e.Message);
        Assert.Contains("EBUSY", e.Message);
    }

    private (int Code, string Out, string Err) Cli(string args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.Run(new RootCommand { VfCommand.Create(_kernel) }, args.Split(' ', StringSplitOptions.RemoveEmptyEntries),
            new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }

    [Fact]
    public void The_vf_command_sets_up_restores_and_restores_again_harmlessly()
    {
        string before = _kernel.Snapshot();
        var (code, stdout, stderr) = Cli($"vf setup {IgbPf} --count 2 --state {_state}");
        Assert.True(code == 0, stderr);
        Assert.Equal(PciFunction.VfsOf(IgbPf, _kernel.Paths), stdout.Split('\n')[^2].Split(' '));
        (code, _, stderr) = Cli($"vf restore --state {_state}");
        Assert.True(code == 0, stderr);
        Assert.Equal(before, _kernel.Snapshot());
        (code, _, stderr) = Cli($"vf restore --state {_state}");
        Assert.Equal(0, code);
        Assert.Contains("nothing to restore", stderr);
    }

    [Theory]
    [InlineData("vf create 0000:05:00.0 --count 99", 2, "sriov_totalvfs")]
    [InlineData("vf create 0000:99:00.0 --count 1", 2, "no PCI device")]
    [InlineData("vf bind 0000:05:00.0 --driver e1000e", 2, "--driver")]
    [InlineData("vf create 0000:05:00.0", 2, "--count")]
    [InlineData("vf create 0000:05:00.0 --count 1 --bogus", 2, "--bogus")]
    public void The_vf_command_refuses_in_one_line(string args, int exit, string mention)
    {
        var (code, _, stderr) = Cli($"{args} --state {_state}");
        Assert.Equal(exit, code);
        Assert.Contains(mention, stderr);
        Assert.Single(stderr.Trim().Split('\n'));
    }

    [Fact]
    public void A_state_file_that_is_not_a_journal_is_refused()
    {
        File.WriteAllText(_state, "{\"hello\": 1}");
        var (code, _, stderr) = Cli($"vf restore --state {_state}");
        Assert.Equal(1, code);
        Assert.Contains("not a vfio-mig host state file", stderr);
    }

    [Fact]
    public void Devlink_json_is_read_as_iproute2_prints_it()
    {
        const string eswitch = """{"dev":{"pci/0000:3b:00.0":{"mode":"switchdev","inline-mode":"none","encap-mode":"basic"}}}""";
        Assert.Equal("switchdev", DevlinkTool.ParseEswitchMode(eswitch, "0000:3b:00.0"));
        Assert.Null(DevlinkTool.ParseEswitchMode(eswitch, "0000:3b:00.1"));
        const string ports = """
            {"port":{"pci/0000:3b:00.0/65535":{"type":"eth","netdev":"p0","flavour":"physical","port":0,"splittable":false},
            "pci/0000:3b:00.0/2":{"type":"eth","netdev":"pf0vf1","flavour":"pcivf","controller":0,"pfnum":0,"vfnum":1,"external":false,
            "splittable":false,"function":{"hw_addr":"00:00:00:00:00:00","roce":"enable","migratable":"enable"}},
            "pci/0000:3b:00.0/1":{"type":"eth","flavour":"pcivf","pfnum":0,"vfnum":0,"function":{"hw_addr":"00:00:00:00:00:00"}}}}
            """;
        Assert.Equal(("pci/0000:3b:00.0/2", (bool?)true), DevlinkTool.ParseVfPort(ports, "0000:3b:00.0", 1));
        Assert.Equal(("pci/0000:3b:00.0/1", (bool?)null), DevlinkTool.ParseVfPort(ports, "0000:3b:00.0", 0));
        Assert.Null(DevlinkTool.ParseVfPort(ports, "0000:3b:00.0", 5));
        Assert.True(DevlinkTool.ParseMigratable(ports, "pci/0000:3b:00.0/2"));
        Assert.Null(DevlinkTool.ParseMigratable(ports, "pci/0000:3b:00.0/9"));
    }
}
