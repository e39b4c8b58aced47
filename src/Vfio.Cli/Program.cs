using System.CommandLine;

namespace Vfio.Cli;

public static class Program
{
    public static int Main(string[] args) => Run(args, new InvocationConfiguration
    {
        // The actions are synchronous: System.CommandLine's termination handling (for asynchronous actions) never
        // applies; the migration commands take SIGINT, SIGTERM and SIGHUP themselves (Interruption).
        ProcessTerminationTimeout = null,
    });

    /// <summary>Parses and runs a command line: a parse error is a usage error like any other, one line and exit code 2.</summary>
    public static int Run(string[] args, InvocationConfiguration configuration) => Run(BuildRoot(), args, configuration);

    /// <summary>The same for a given command tree (tests give one whose commands act on a model of the host).</summary>
    public static int Run(RootCommand root, string[] args, InvocationConfiguration configuration)
    {
        var result = root.Parse(args);
        if (result.Errors.Count > 0)
        {
            var command = result.CommandResult.Command;
            string help = command is RootCommand ? "vfio-mig --help" : $"vfio-mig {command.Name} --help";
            configuration.Error.WriteLine($"vfio-mig: {result.Errors[0].Message.ReplaceLineEndings(" ")} (see {help})");
            return ExitCodes.Usage;
        }
        return result.Invoke(configuration);
    }

    /// <summary>The whole command tree; tests call it to run commands in-process.</summary>
    public static RootCommand BuildRoot()
    {
        var root = new RootCommand("vfio-mig: VFIO device live migration over multifd channels, with per-device load timings.");
        // Each area of the tool adds its own commands.
        var host = new Vfio.Host.LinuxHostKernel(VfioHostPaths.Default);
        foreach (var command in DeviceCommands.Create(VfioHostPaths.Default, host.Devlink))
            root.Subcommands.Add(command);
        foreach (var command in MigrationCommands.Create()) root.Subcommands.Add(command);
        root.Subcommands.Add(BenchCommand.Create());
        root.Subcommands.Add(ResumeCommand.Create());
        root.Subcommands.Add(VfCommand.Create(host));
        return root;
    }
}
