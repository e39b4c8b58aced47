using System.CommandLine;
using Vfio.Host;

namespace Vfio.Cli;

/// <summary>`vf create|bind|setup|restore`: prepare SR-IOV VFs for migration and put the host back afterwards.</summary>
public static class VfCommand
{
    /// <param name="kernel">The host's kernel, or a model of it in tests.</param>
    public static Command Create(IHostKernel kernel)
    {
        var state = new Option<string>("--state")
        {
            Description = "The journal of every change, from which `vf restore` undoes them",
            DefaultValueFactory = _ => HostStateFile.DefaultPath,
        };
        var dryRun = new Option<bool>("--dry-run") { Description = "Print what would be written where, and write nothing" };
        var count = new Option<int>("--count") { Description = "How many VFs", Required = true };
        var replace = new Option<bool>("--replace") { Description = "Remove the VFs the PF has first" };
        var driver = new Option<string?>("--driver")
        {
            Description = $"{HostSetup.Mlx5VfioPci} or {HostSetup.VfioPci} (default: {HostSetup.Mlx5VfioPci} for Mellanox functions, "
                + $"else {HostSetup.VfioPci})",
        };
        var pf = new Argument<string>("PF") { Description = "The physical function's PCI address, e.g. 0000:3b:00.0" };
        var devices = new Argument<string[]>("DEVICE") { Description = "PCI addresses of the functions to bind", Arity = ArgumentArity.OneOrMore };

        var create = new Command("create", "Create VFs on a PF (sriov_numvfs)") { pf, count, replace, state, dryRun };
        create.SetAction(r => Run(r, kernel, state, dryRun, s =>
        {
            var vfs = s.CreateVfs(r.GetValue(pf)!, r.GetValue(count), r.GetValue(replace));
            r.InvocationConfiguration.Output.WriteLine(string.Join(' ', vfs));
            return ExitCodes.Ok;
        }));
        var bind = new Command("bind", "Bind functions to a VFIO driver (for mlx5: switchdev and migratable first)")
        {
            devices, driver, state, dryRun,
        };
        bind.SetAction(r => Run(r, kernel, state, dryRun, s =>
        {
            s.Bind(r.GetValue(devices)!, Driver(r.GetValue(driver)));
            return ExitCodes.Ok;
        }));
        var setup = new Command("setup", "Create VFs on a PF and bind them all: create and bind in one go")
        {
            pf, count, driver, replace, state, dryRun,
        };
        setup.SetAction(r => Run(r, kernel, state, dryRun, s =>
        {
            var vfs = s.Setup(r.GetValue(pf)!, r.GetValue(count), Driver(r.GetValue(driver)), r.GetValue(replace));
            r.InvocationConfiguration.Output.WriteLine(string.Join(' ', vfs));
            return ExitCodes.Ok;
        }));
        var restore = new Command("restore", "Put the host back as it was before the first recorded change (also after a crash half-way)")
        {
            state,
            dryRun,
        };
        restore.SetAction(r => Run(r, kernel, state, dryRun, s =>
        {
            if (!s.Restore()) throw new VfioException($"vf restore from {r.GetValue(state)}", 0, "some changes are not undone (see above); "
                + "the state file is kept: fix the cause and run vf restore again");
            return ExitCodes.Ok;
        }, restoring: true));
        return new Command("vf", "Set up SR-IOV VFs for migration, and restore the host afterwards") { create, bind, setup, restore };
    }

    private static string? Driver(string? driver) => driver switch
    {
        null or HostSetup.VfioPci or HostSetup.Mlx5VfioPci => driver,
        _ => throw new MigrationCommands.UsageException($"--driver must be {HostSetup.Mlx5VfioPci} or {HostSetup.VfioPci}"),
    };

    private static int Run(ParseResult r, IHostKernel kernel, Option<string> stateOption, Option<bool> dryRunOption,
        Func<HostSetup, int> action, bool restoring = false)
    {
        var error = r.InvocationConfiguration.Error;
        try
        {
            var state = HostStateFile.Open(r.GetValue(stateOption)!);
            if (restoring && state.Changes.Count == 0)
            {
                error.WriteLine($"vfio-mig: vf restore: nothing to restore ({state.Path} records no change)");
                return ExitCodes.Ok;
            }
            return action(new HostSetup(kernel, state, r.InvocationConfiguration.Output, r.GetValue(dryRunOption)));
        }
        catch (Exception e) when (e is MigrationCommands.UsageException or ArgumentException)
        {
            error.WriteLine($"vfio-mig: {e.Message}");
            return ExitCodes.Usage;
        }
        catch (Exception e) when (e is VfioException or IOException or UnauthorizedAccessException or InvalidDataException)
        {
            error.WriteLine($"vfio-mig: vf: {e.Message.ReplaceLineEndings(" ")}");
            return ExitCodes.Failed;
        }
    }
}
