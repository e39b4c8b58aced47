using System.CommandLine;

namespace Vfio.Cli;

public static class Program
{
    public static int Main(string[] args) => BuildRoot().Parse(args).Invoke();

    /// <summary>The whole command tree; tests call it to run commands in-process.</summary>
    public static RootCommand BuildRoot()
    {
        var root = new RootCommand("vfio-mig: VFIO device live migration over multifd channels, with per-device load timings.");
        // Each area of the tool adds its own commands.
        foreach (var command in DeviceCommands.Create(VfioHostPaths.Default))
            root.Subcommands.Add(command);
        foreach (var command in MigrationCommands.Create()) root.Subcommands.Add(command);
        root.Subcommands.Add(BenchCommand.Create());
        root.Subcommands.Add(ResumeCommand.Create());
        root.Subcommands.Add(VfCommand.Create(new Vfio.Host.LinuxHostKernel(VfioHostPaths.Default)));
        return root;
    }
}
